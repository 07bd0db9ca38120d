"""The image build's pre-warm: boot SwarmUI at build so that nothing is installed when a worker starts.

    python -m handlers.swarm_worker.prewarm        (images/swarm-worker/Dockerfile, PREWARM=1)

SwarmUI's first start of its ComfyUI backend pip-installs what ComfyUI and SwarmUI's own nodes need
and the image lacks (rembg, onnxruntime, ultralytics, newer diffusers/transformers/av, ...:
`DoLibFixes` in mcmonkeyprojects/SwarmUI src/BuiltinExtensions/ComfyUIBackend/
ComfyUISelfStartBackend.cs:95-133, 475, 480-600). On a worker that costs minutes of every cold start,
needs the internet and can outlast the legacy extension's wakeup polling. So the build:

1. boots SwarmUI with its ComfyUI backend on the CPU (`--cpu` for this boot only: build hosts
   have no GPU; the image's runtime configuration is untouched) and waits for the backend to run;
2. boots it a second time and fails unless that boot installed nothing (SwarmUI logs each install
   as a `[Load ...] Installing '<package>' for ComfyUI...` debug line, AbstractBackend.cs:61-63);
3. removes what the boots left outside the SwarmUI install (its data folder, logs; with
   `--drop-pip-cache` pip's cache).

Exit status 0 when warm, 1 otherwise (with SwarmUI's last log lines), so a failed pre-warm fails
the build.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from common.redaction import configure_logging
from handlers.swarm_worker.config import WorkerConfig
from handlers.swarm_worker.swarm_process import SwarmProcess, SwarmStartError

log = logging.getLogger("swarm.prewarm")

# `pipCall` reports "<reason> for ComfyUI..." before each pip run ("Installing 'x'", "Updating 'x'",
# "Remove old 'x'") and "Done <reason> for ComfyUI." after it (ComfyUISelfStartBackend.cs:497-504, pipCall).
_INSTALL_LINE = re.compile(r"\[Load [^\]]*\] (?P<what>.+) for ComfyUI\.\.\.\s*$")


def prewarm_config(cfg: WorkerConfig, work_dir: Path, timeout: float) -> WorkerConfig:
    """The worker's own SwarmUI configuration, with a CPU backend, debug logging (to see installs),
    a throw-away data folder and the image's own model folder only."""
    return replace(cfg, comfy_extra_args=" ".join(filter(None, (cfg.comfy_extra_args, "--cpu"))),
                   launch_cmd=cfg.launch_cmd + " --loglevel Debug", work_dir=work_dir,
                   output_dir=work_dir / "jobs", model_roots=[cfg.swarmui_dir / "Models"],
                   startup_timeout=timeout, max_restarts=0)


def installs_in(lines: list[str]) -> list[str]:
    """What SwarmUI installed or updated during a boot, from its log lines."""
    return [m.group("what") for m in map(_INSTALL_LINE.search, lines) if m]


async def boot_once(cfg: WorkerConfig) -> list[str]:
    """Start SwarmUI, wait until its backend runs, stop it; returns this boot's log lines."""
    process = SwarmProcess(cfg)
    start = cfg.log_file.stat().st_size if cfg.log_file.exists() else 0
    try:
        await process.ensure_ready(cfg.startup_timeout + 5)
        log.info("SwarmUI's backend is running: %s", process.describe())
    finally:
        await process.stop()
    with cfg.log_file.open("rb") as fh:
        fh.seek(start)
        return fh.read().decode("utf-8", "replace").splitlines()


async def prewarm(cfg: WorkerConfig) -> list[str]:
    """Both boots; returns what the first one installed. Raises SwarmStartError or RuntimeError."""
    first = installs_in(await boot_once(cfg))
    log.info("first boot installed %d package(s): %s", len(first), ", ".join(first) or "none")
    again = installs_in(await boot_once(cfg))
    if again:
        raise RuntimeError("SwarmUI still installs at start after the pre-warm boot (so would every worker): "
                           + ", ".join(again))
    return first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds each boot may take (the first one pip-installs; default 1800)")
    parser.add_argument("--drop-pip-cache", action="store_true",
                        help="remove ~/.cache/pip afterwards (the image build: SwarmUI's installs fill it)")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        base = WorkerConfig.from_env()
    except ValueError as exc:
        log.error("configuration error: %s", exc)
        return 2
    work_dir = Path(tempfile.mkdtemp(prefix="swarm-prewarm-"))
    cfg = prewarm_config(base, work_dir, args.timeout)
    log.info("pre-warming SwarmUI in %s (ComfyUI arguments for this boot: %s)", cfg.swarmui_dir,
             cfg.comfy_extra_args)
    try:
        asyncio.run(prewarm(cfg))
    except SwarmStartError as exc:
        log.error("pre-warm failed: %s\n%s", exc, "\n".join(exc.tail[-30:]))
        return 1
    except RuntimeError as exc:
        log.error("pre-warm failed: %s", exc)
        return 1
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
        if args.drop_pip_cache:
            shutil.rmtree(Path.home() / ".cache" / "pip", ignore_errors=True)
    log.info("pre-warm done: SwarmUI starts without installing anything")
    return 0


if __name__ == "__main__":
    sys.exit(main())
