"""controlnet-pyworker's settings, all from the environment, read once per process.

`Settings.from_env()` is the only place the image's Python code reads its variables; each
field names its variable, default and meaning, and docs/controlnet-pyworker.md's environment
table is generated from them (`python -m scripts.gen_docs`). `START_VARIABLES` are the ones only
`start.sh` (or the vastai package) reads. `python -m handlers.controlnet_pyworker.settings NAME...`
prints `NAME=value` lines (env or default) so `start.sh` takes its paths from here, not a copy.

Standard library only: the vast.ai front's venv has no pydantic.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from common import env_settings
from common.env_settings import flag, integer, number, optional, text

MIB = 1024 * 1024


def setting(env: str, default: Any, doc: str, *, parse: Callable[[str], Any] = text, shown: str | None = None,
            group: str = "server"):
    """A field read from `env`; `group`: who reads it (the docs' "read by" column)."""
    return env_settings.setting(env, default, doc, parse=parse, shown=shown, group=group)


@dataclass(frozen=True)
class Settings:
    models_dir: Path = setting("MODELS_DIR", Path("/workspace/models"), "model files", parse=Path)
    model_manifest: Path | None = setting(
        "MODEL_MANIFEST", None, "manifest override", parse=lambda r: Path(r) if r else None,
        shown="`$MODELS_DIR/manifest.json`, else the packaged one")
    model_log: Path = setting("MODEL_LOG", Path("/workspace/logs/model_server.log"),
                              "readiness log for the PyWorker (truncated at start)", parse=Path, group="both")
    host: str = setting("MODEL_SERVER_HOST", "127.0.0.1", "model server bind address; beyond loopback the server "
                        "refuses to start without `MODEL_SERVER_TOKEN`", parse=lambda r: r or "127.0.0.1",
                        group="model server")
    port: int = setting("MODEL_SERVER_PORT", 5001, "model server port (the vast.ai front forwards to it)", parse=integer,
                        group="both")
    token: str | None = setting(
        "MODEL_SERVER_TOKEN", None, "when set, every route but `/ping` needs `Authorization: Bearer <token>` "
        "(direct rentals; the vast.ai front cannot send it, so vast mode stays on loopback)", parse=optional,
        shown="unset", group="model server")
    preload: str | None = setting(
        "PRELOAD_MODEL", None, "variant loaded (and, by `start.sh`, fetched) before the worker takes requests "
        "(`none`: skip)", parse=optional, shown="the manifest's `default_variant` (`lightning`)", group="all")
    max_queue: int = setting("MAX_QUEUE", 8, "requests that may wait behind the running one (then 429)", parse=integer)
    max_loaded_variants: int = setting("MAX_LOADED_VARIANTS", 2, "variants kept in memory (LRU)", parse=integer)
    device: str | None = setting("DEVICE", None, "`cpu` to force CPU", parse=optional, shown="`cuda` if available")
    require_cuda: bool = setting(
        "REQUIRE_CUDA", False, "refuse to run without a usable CUDA device (fatal line, jobs fail with "
        "`refresh_worker`)", parse=flag, shown="`1` in the GPU image, unset in CPU builds")
    enable_xformers: bool = setting("ENABLE_XFORMERS", True, "use xformers when installed (CUDA only; SDPA "
                                    "otherwise)", parse=flag, shown="`1`")
    max_image_b64_bytes: int = setting("MAX_IMAGE_B64_BYTES", 16 * MIB, "largest base64 depth map or source image",
                                       parse=integer, shown="16 MiB")
    max_body_bytes: int | None = setting("MAX_BODY_BYTES", None, "request body limit (413)",
                                         parse=lambda r: integer(r) if r else None,
                                         shown="`MAX_IMAGE_B64_BYTES` + 1 MiB", group="model server")
    runpod_max_inline_bytes: int = setting("RUNPOD_MAX_INLINE_BYTES", 9 * MIB, "base64 results larger than this "
                                           "need an `output` spec", parse=integer, shown="9 MiB", group="runpod")
    progress_interval: float = setting("PROGRESS_INTERVAL", 1.0, "seconds between per-step RunPod progress "
                                       "updates", parse=number, group="runpod")
    png_compress_level: int = setting("PNG_COMPRESS_LEVEL", 1, "zlib level of the PNGs returned (0-9; 1 is about "
                                      "40 ms faster than 6 at 1024² for ~8% more bytes)", parse=integer)
    volume_dir: Path | None = setting("VOLUME_DIR", None, "the volume uploaded images are kept on (unset: "
                                      "`/runpod-volume`, else a mounted `/workspace`, else a temporary folder, not "
                                      "kept)", parse=lambda r: Path(r) if r else None, shown="unset")
    log_level: str = setting("LOG_LEVEL", "info", "log level of the model server, the RunPod handler and the "
                             "vast.ai front", parse=lambda r: r or "info", group="all")
    max_queue_time: float = setting("MAX_QUEUE_TIME", 60.0, "seconds of estimated wait before the front answers "
                                    "429", parse=number, shown="`60`", group="vast")
    benchmark_size: int = setting("BENCHMARK_SIZE", 1024, "width and height of the front's start-up benchmark",
                                  parse=integer, group="vast")
    benchmark_runs: int = setting("BENCHMARK_RUNS", 3, "runs of the front's start-up benchmark", parse=integer,
                                  group="vast")
    runpod_worker_loop: bool = setting("RUNPOD_WEBHOOK_GET_JOB", False, "set by RunPod serverless: the handler "
                                       "preloads `PRELOAD_MODEL` before taking jobs", parse=bool,
                                       shown="set by RunPod", group="runpod")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Every field from `env` (default: `os.environ`); a bad value names its variable."""
        values = env_settings.read_env(cls, env)
        return cls(**values)

    @property
    def body_limit(self) -> int:
        """MAX_BODY_BYTES, by default room for one base64 image plus 1 MiB for the rest."""
        return self.max_body_bytes if self.max_body_bytes is not None else self.max_image_b64_bytes + MIB

    def preload_variant(self, default_variant: str) -> str | None:
        """The variant to preload: PRELOAD_MODEL, else the manifest's default; None for `none`."""
        name = self.preload or default_variant
        return None if name.lower() == "none" else name


# Read by start.sh, `common.vast_tls` (which start.sh runs) or the vastai package, never by this
# package's Python code: (variable, default, read by, meaning).
START_VARIABLES: tuple[tuple[str, str, str, str], ...] = (
    ("CONTROLNET_MODE", "`auto`", "`start.sh`", "`runpod` (handler), `vast` (model server + PyWorker front), "
     "`server` (model server alone); `auto` picks `runpod` when RunPod's variables are set, else `vast`"),
    ("FETCH_ON_START", "`1`", "`start.sh`", "fetch `PRELOAD_MODEL`'s files before serving"),
    ("WORKER_PORT", "`3000`", "vast.ai front", "the PyWorker front's port"),
    ("PYWORKER_DIR", "`/workspace`", "`start.sh`", "the front's working directory (`.has_benchmark`)"),
    ("USE_SSL", "`true`", "`start.sh`, vast.ai front", "the front serves HTTPS with a vast-signed instance "
     "certificate that `start.sh` has made (`/etc/instance.crt` / `.key`); `false`: plain HTTP, requests and "
     "images unencrypted"),
    ("CONTAINER_ID", "set by vast.ai", "`common.vast_tls`", "the instance id vast.ai signs the TLS certificate for"),
    ("VAST_TLS_DIR", "`/etc`", "`common.vast_tls`", "where the TLS key and certificate are written"),
    ("VAST_SIGN_CERT_URL", "vast's `sign_cert`", "`common.vast_tls`", "who signs the instance certificate"),
)

GROUPS = {"all": "all", "server": "model server and RunPod handler", "model server": "model server",
          "runpod": "RunPod handler", "vast": "vast.ai front", "both": "model server and vast.ai front"}


def env_table() -> str:
    """The environment table of docs/controlnet-pyworker.md (markdown)."""
    rows = env_settings.field_rows(Settings, lambda f: GROUPS[f.metadata["group"]])
    rows += [[f"`{name}`", default, reader, doc] for name, default, reader, doc in START_VARIABLES]
    rows.append(["upload settings", "", "uploads", "see [uploads](uploads.md#environment)"])
    return env_settings.markdown_table(["variable", "default", "read by", "meaning"], rows)


def main(argv: list[str]) -> int:
    """`NAME=value` (shell-quoted) for each variable named, for `start.sh` to `eval`."""
    # only the variables named are read: another one set wrong is for the server to report
    settings = Settings.from_env({name: os.environ[name] for name in argv if name in os.environ})
    by_env = {f.metadata["env"]: f.name for f in fields(Settings)}
    for name in argv:
        if name not in by_env:
            print(f"unknown setting {name}", file=sys.stderr)
            return 2
        value = getattr(settings, by_env[name])
        print(f"{name}={shlex.quote('' if value is None else str(value))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
