"""The swarm worker's settings: `WorkerConfig.from_env()` is where the worker reads its environment;
docs/swarm-worker.md's environment table is generated from its fields (`python -m scripts.gen_docs`).
Standard library only: the vast.ai PyWorker side (handlers.swarm_worker.vast, in .venv-vast) imports it too."""

from __future__ import annotations

import os
import socket
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from common import env_settings
from common.env_settings import choice, integer, number, optional, read_env, setting
from handlers.swarm_worker.run_as import RunAs, parse_run_as, prepare_run_as

DEFAULT_SWARMUI_DIR = "/opt/SwarmUI"
DEFAULT_LAUNCH_ARGS = ("--launch_mode none --host 127.0.0.1 --port {port} --data_dir {data_dir} "
                       "--settings_file {settings_file} --backends_file {backends_file}")


MIN_TOKEN_LENGTH = 16
TOKEN_VARIABLES = ("SWARM_ACCESS_TOKEN", "SWARMUI_WORKER_TOKEN")  # ours; the one HartsyAI's CloudBackends injects
# vast.ai gives every instance a certificate signed by its own root CA (what CloudBackends checks with UseTls).
VAST_INSTANCE_CERT = Path("/etc/instance.crt")
VAST_INSTANCE_KEY = Path("/etc/instance.key")


def _aliased(name: str, alias: str) -> str | None:
    """The value of `name`, else of `alias` (HartsyAI's name for the same setting); both set must agree."""
    value, other = os.environ.get(name, "").strip(), os.environ.get(alias, "").strip()
    if value and other and value != other:
        raise ValueError(f"environment variables {name} and {alias} name the same setting with different values: "
                         "set one of them")
    return value or other or None


def _port(name: str, alias: str, default: int) -> int:
    raw = _aliased(name, alias)
    if raw is None:
        return default
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ValueError(f"environment variable {name} ({alias}): expected a port number, got {raw!r}")
    return int(raw)


def access_token() -> str | None:
    """A fixed gateway token from the environment (SWARM_ACCESS_TOKEN or SWARMUI_WORKER_TOKEN)."""
    token = _aliased(*TOKEN_VARIABLES)
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        name = next(n for n in TOKEN_VARIABLES if os.environ.get(n, "").strip() == token)
        raise ValueError(f"environment variable {name}: must be at least {MIN_TOKEN_LENGTH} characters")
    return token


def tls_files(mode: str = "auto") -> tuple[Path, Path] | None:
    """The gateway's certificate and key: SWARMUI_TLS_CERT/SWARMUI_TLS_KEY, else vast.ai's instance
    certificate when it is there (SWARMUI_TLS=off serves plain HTTP anyway)."""
    cert, key = os.environ.get("SWARMUI_TLS_CERT", "").strip(), os.environ.get("SWARMUI_TLS_KEY", "").strip()
    if bool(cert) != bool(key):
        raise ValueError("environment variables SWARMUI_TLS_CERT and SWARMUI_TLS_KEY: set both or neither")
    if cert:
        for name, path in (("SWARMUI_TLS_CERT", cert), ("SWARMUI_TLS_KEY", key)):
            if not Path(path).is_file():
                raise ValueError(f"environment variable {name}: no such file {path!r}")
        return Path(cert), Path(key)
    if mode == "auto" and VAST_INSTANCE_CERT.is_file() and VAST_INSTANCE_KEY.is_file():
        return VAST_INSTANCE_CERT, VAST_INSTANCE_KEY
    return None


def default_model_roots(swarmui_dir: Path) -> list[Path]:
    """The network volume's model folder (serverless or pod mount), then the models baked into the image."""
    roots = []
    for volume in (Path("/runpod-volume"), Path("/workspace")):
        if volume.is_dir():
            roots.append(volume / "SwarmUI" / "Models")
            break
    roots.append(swarmui_dir / "Models")
    return roots


def lease_control_port() -> int:
    """The loopback port of the vast.ai lease control (lease_control.py), which vast.py forwards to."""
    return read_env(WorkerConfig, only=["lease_control_port"], blank_is_unset=True).get("lease_control_port", 18000)


def _env(name: str) -> str | None:
    return os.environ.get(name, "").strip() or None


def _roots(raw: str) -> list[Path]:
    return [Path(p) for p in raw.split(";") if p.strip()]


@dataclass(kw_only=True)
class WorkerConfig:
    """Each field names its variable, default and meaning (docs/swarm-worker.md's table is generated
    from them); those with `parse=None` are computed in `from_env` (aliases, derived defaults)."""

    swarmui_dir: Path = setting("SWARMUI_DIR", Path(DEFAULT_SWARMUI_DIR), "SwarmUI install (working directory "
                                "of the process)", parse=Path)
    launch_cmd: str = setting("SWARMUI_LAUNCH_CMD", doc="command starting SwarmUI; `{port}` etc. are filled in",
                              parse=None, shown=f"`$SWARMUI_DIR/src/bin/live_release/SwarmUI {DEFAULT_LAUNCH_ARGS}`")
    internal_port: int = setting("SWARMUI_INTERNAL_PORT", 7810, "SwarmUI's loopback port", parse=integer)
    public_port: int = setting("SWARM_PUBLIC_PORT", 7801, "the gateway's port", parse=None,
                               aliases=("SWARMUI_PUBLIC_PORT",))
    public_host: str = setting("SWARM_PUBLIC_HOST", "0.0.0.0", "the gateway's bind address", parse=None,
                               aliases=("SWARMUI_PUBLIC_HOST",))
    public_url: str | None = setting("SWARM_PUBLIC_URL", None, "base of the public URL when not on RunPod",
                                     parse=lambda r: r.rstrip("/") or None,
                                     shown="RunPod proxy URL, else `http(s)://127.0.0.1:7801`")
    access_token: str | None = setting(
        "SWARM_ACCESS_TOKEN", None, f"fixed gateway token (pods, vast.ai instances; ≥ {MIN_TOKEN_LENGTH} "
        "characters); valid during and after every lease; `SWARMUI_WORKER_TOKEN` is the name HartsyAI's "
        "CloudBackends injects (as it does `SWARMUI_PUBLIC_PORT`/`SWARMUI_PUBLIC_HOST`)", parse=None,
        aliases=("SWARMUI_WORKER_TOKEN",), shown="none: a token is minted per lease, and one per worker for the "
        "legacy URL")
    tls_cert: Path | None = setting("SWARMUI_TLS_CERT", None, "PEM certificate: the gateway serves HTTPS (with "
                                    "`SWARMUI_TLS_KEY`)", parse=None,
                                    shown=f"vast.ai's `{VAST_INSTANCE_CERT}` when present")
    tls_key: Path | None = setting("SWARMUI_TLS_KEY", None, "PEM key of `SWARMUI_TLS_CERT`", parse=None,
                                   shown=f"vast.ai's `{VAST_INSTANCE_KEY}` when present")
    tls_mode: str = setting("SWARMUI_TLS", "auto", "`off`: plain HTTP even where vast.ai's instance certificate "
                            "is there (`SWARMUI_TLS_CERT` still wins)", parse=choice("auto", "off"))
    run_as: RunAs | None = setting("SWARMUI_RUN_AS", None, "user (`name[:group]` or `uid[:gid]`) SwarmUI and "
                                   "ComfyUI run as; needs a root worker", parse=None,
                                   shown="`swarmui` in the GPU image, else unset")
    lease_control_port: int = setting("SWARM_LEASE_CONTROL_PORT", 18000, "vast.ai serverless: the lease "
                                      "control's loopback port", parse=integer)
    startup_timeout: float = setting("SWARMUI_STARTUP_TIMEOUT", 600, "seconds for SwarmUI to answer and its "
                                     "backend to run", parse=number)
    max_restarts: int = setting("SWARMUI_MAX_RESTARTS", 1, "automatic restarts after a crash or failed start",
                                parse=integer)
    stop_timeout: float = setting("SWARMUI_STOP_TIMEOUT", 15, "seconds SwarmUI gets to exit before it is killed",
                                  parse=number)
    model_roots: list[Path] = setting("SWARMUI_MODEL_ROOT", doc="model folders (`;`-list)", parse=_roots,
                                      shown="volume root + `$SWARMUI_DIR/Models`")
    work_dir: Path = setting("SWARM_WORK_DIR", doc="per-worker SwarmUI data, outputs, model tree, `swarmui.log`",
                             parse=Path, shown="`/tmp/swarm-worker`")
    output_dir: Path = setting("SWARM_OUTPUT_DIR", doc="copies of `generate` outputs", parse=Path,
                               shown="`/runpod-volume/swarm_outputs`, else `$SWARM_WORK_DIR/jobs`")
    idle_seconds: float = setting("SWARMUI_IDLE_SECONDS", 120, "lease default: release after this long idle",
                                  parse=number)
    startup_grace_seconds: float = setting("SWARMUI_STARTUP_GRACE_SECONDS", 600, "lease default: release when "
                                           "unused this long", parse=number)
    max_lease_seconds: float = setting("SWARMUI_MAX_LEASE_SECONDS", 3600, "lease default: longest lease",
                                       parse=number)
    lease_min_seconds: float = setting("SWARM_LEASE_MIN_SECONDS", 5, "lower clamp of client lease limits",
                                       parse=number)
    lease_cap_seconds: float = setting("SWARM_LEASE_CAP_SECONDS", 3600, "upper clamp of client lease limits",
                                       parse=number)
    idle_poll_seconds: float = setting("SWARM_IDLE_POLL_SECONDS", 5, "how often SwarmUI's status is read",
                                       parse=number)
    hold_cap_seconds: float = setting("SWARM_HOLD_CAP_SECONDS", 3600, "longest `wakeup`/`keepalive` hold",
                                      parse=number)
    wakeup_hold: str = setting("SWARM_WAKEUP_HOLD", "ready", "`ready`: `wakeup` ends once SwarmUI is up; "
                               "`duration`: it holds its whole `duration`", parse=choice("ready", "duration"))
    concurrency: int = setting("SWARM_WORKER_CONCURRENCY", 8, "jobs at once (a lease always holds the worker "
                               "alone)", parse=lambda r: max(1, integer(r)))
    inline_max_bytes: int = setting("SWARM_INLINE_MAX_BYTES", 6 * 1024 * 1024, "largest inline `generate` result",
                                    parse=integer)
    comfy_extra_args: str = setting("SWARMUI_COMFY_EXTRA_ARGS", "", "ComfyUI arguments in the pre-written "
                                    "backend (e.g. `--lowvram`)")
    http_timeout: float = setting("SWARMUI_HTTP_TIMEOUT", 10, "seconds for the worker's own SwarmUI API calls "
                                  "(status, sessions, model lists)", parse=number)
    refresh_timeout: float = setting("SWARMUI_REFRESH_TIMEOUT", 600, "seconds a model refresh (`TriggerRefresh`) "
                                     "may take: it rescans every model folder", parse=number)
    refresh_debounce_seconds: float = setting(
        "SWARMUI_REFRESH_DEBOUNCE_SECONDS", 10, "SwarmUI ignores a refresh within 10 s of its start or of the last "
        "one; the worker waits that out", parse=number)
    model_manifest: str | None = setting("SWARM_MODEL_MANIFEST", None, "models fetched at start (standalone, vast.ai "
                                         "serverless): inline JSON or a file path (see [deploy](#vastai-template-and-runpod-pods))", parse=optional)
    model_download_root: Path | None = setting("SWARM_MODEL_DOWNLOAD_ROOT", None, "where the manifest's models go",
                                               parse=Path, shown="the first model folder")
    tunnel: str = setting("SWARM_TUNNEL", "auto", "`auto`, `cloudflared` or `none`: standalone only; `auto` opens "
                          "a Cloudflare quick tunnel when `cloudflared` is installed and there is no proxy of its "
                          "own", parse=str.lower)  # checked by standalone.tunnel_binary, its only user
    cloudflared_bin: str | None = setting("SWARM_CLOUDFLARED_BIN", None, "the `cloudflared` binary",
                                          parse=optional, shown="`cloudflared` on `PATH`")
    url_file: Path | None = setting("SWARM_URL_FILE", None, "standalone: where the full public URL is written",
                                    parse=Path, shown="`$SWARM_WORK_DIR/public_url.txt`")
    pod_id: str | None = setting("RUNPOD_POD_ID", None, "the RunPod pod or worker (its proxy URL and worker id)",
                                 parse=optional, shown="set by RunPod")
    worker_id: str = setting("VAST_CONTAINERLABEL", doc="the worker id off RunPod (on RunPod: `RUNPOD_POD_ID`; "
                             "elsewhere the host name)", parse=None, default_factory=socket.gethostname,
                             shown="set by vast.ai")
    vast_public_ip: str | None = setting("PUBLIC_IPADDR", None, "the instance's public address", parse=optional,
                                         shown="set by vast.ai")
    vast_public_port: str | None = setting("VAST_TCP_PORT_<SWARM_PUBLIC_PORT>", None, "the gateway's public port "
                                           "as vast.ai maps it", parse=None, shown="set by vast.ai")

    @classmethod
    def from_env(cls) -> WorkerConfig:
        values = read_env(cls, blank_is_unset=True)
        swarmui_dir = values.setdefault("swarmui_dir", Path(DEFAULT_SWARMUI_DIR))
        values["model_roots"] = roots = values.get("model_roots") or default_model_roots(swarmui_dir)
        work_dir = values.setdefault("work_dir", Path(tempfile.gettempdir()) / "swarm-worker")
        volume_outputs = Path("/runpod-volume/swarm_outputs") if Path("/runpod-volume").is_dir() else None
        values.setdefault("output_dir", volume_outputs or work_dir / "jobs")
        values.setdefault("model_download_root", roots[0])
        values.setdefault("url_file", work_dir / "public_url.txt")
        tls = tls_files(values.get("tls_mode", "auto"))
        public_port = _port("SWARM_PUBLIC_PORT", "SWARMUI_PUBLIC_PORT", 7801)
        cfg = cls(
            **values,
            launch_cmd=_env("SWARMUI_LAUNCH_CMD") or f"{swarmui_dir}/src/bin/live_release/SwarmUI "
                                                     f"{DEFAULT_LAUNCH_ARGS}",
            public_port=public_port,
            public_host=_aliased("SWARM_PUBLIC_HOST", "SWARMUI_PUBLIC_HOST") or "0.0.0.0",
            access_token=access_token(),
            tls_cert=tls[0] if tls else None,
            tls_key=tls[1] if tls else None,
            run_as=parse_run_as(os.environ.get("SWARMUI_RUN_AS")),
            worker_id=values.get("pod_id") or _env("VAST_CONTAINERLABEL") or socket.gethostname(),
            vast_public_port=_env(f"VAST_TCP_PORT_{public_port}"),
        )
        cfg.server_ssl_context()  # a certificate that does not load fails here, naming the variables
        return cfg

    def server_ssl_context(self) -> ssl.SSLContext | None:
        """The gateway's TLS context (None: plain HTTP, e.g. behind RunPod's HTTPS proxy)."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"TLS certificate {self.tls_cert} / key {self.tls_key} (SWARMUI_TLS_CERT, "
                             f"SWARMUI_TLS_KEY) do not load: {exc}") from None
        return ctx

    def prepare_run_as(self) -> dict[str, str]:
        """Before each SwarmUI start under `run_as`: its folders, the volume's model folders; its env entries."""
        assert self.run_as is not None
        shared = [r for r in self.model_roots if not r.is_relative_to(self.swarmui_dir)]
        return prepare_run_as(self.run_as, own=[self.data_dir, self.swarm_output_dir, self.model_tree],
                              shared=shared, home_fallback=self.work_dir / "home")

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    @property
    def data_dir(self) -> Path:
        return self.work_dir / "Data"

    @property
    def swarm_output_dir(self) -> Path:
        """Where SwarmUI writes its outputs (served as View/...): per worker, wiped between leases."""
        return self.work_dir / "Output"

    @property
    def model_tree(self) -> Path:
        return self.work_dir / "model_tree"

    @property
    def log_file(self) -> Path:
        return self.work_dir / "swarmui.log"

    def public_base_url(self) -> str:
        """Base URL clients reach the gateway at (no token)."""
        if self.public_url:
            return self.public_url
        if self.pod_id:
            return f"https://{self.pod_id}-{self.public_port}.proxy.runpod.net"
        return f"{self.scheme}://127.0.0.1:{self.public_port}"

    def vast_url(self) -> str | None:
        """The gateway as vast.ai maps it, `<scheme>://PUBLIC_IPADDR:VAST_TCP_PORT_<port>` (None elsewhere)."""
        if self.vast_public_ip and self.vast_public_port:
            return f"{self.scheme}://{self.vast_public_ip}:{self.vast_public_port}"
        return None


# Read outside `WorkerConfig`: (variable, default, meaning).
OTHER_VARIABLES: tuple[tuple[str, str, str], ...] = (
    ("SWARMUI_PASS_ENV", "empty", "credentials SwarmUI may see (e.g. `HF_TOKEN,CIVITAI_API_KEY`); all others — RunPod "
     "job key, `AWS_*`/`S3_*`, tokens, keys — are removed from SwarmUI's and ComfyUI's environment, since a lease "
     "holder can run code there (read each time SwarmUI starts)"),
    ("VAST_PYTHON", "`/opt/venv-vast/bin/python`", "vast.ai serverless: the Python of vast's PyWorker (`start.sh`)"),
)


def env_table() -> str:
    """The environment table of docs/swarm-worker.md (markdown)."""
    rows = env_settings.field_rows(WorkerConfig) + [[f"`{name}`", default, doc] for name, default, doc in OTHER_VARIABLES]
    return env_settings.markdown_table(["variable", "default", "meaning"], rows)
