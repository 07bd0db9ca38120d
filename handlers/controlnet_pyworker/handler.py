"""RunPod handler: the job input is a /generate body; the engine runs in this process.
A cancelled job stops its generation at the next denoising step.

`python -m handlers.controlnet_pyworker.handler` (RunPod's `handler.py` convention) and
`python -m handlers.controlnet_pyworker` both start the SDK (`main`); SDK flags such as
`--test_input` and `--rp_serve_api` pass through.

Under RunPod's worker loop the PRELOAD_MODEL variant (default: the manifest's) is loaded before
the first job is taken. A preload that fails (no network, a missing file) does not stop the
worker: the SDK loop starts anyway (a process that exits first is restarted in a loop by RunPod,
its job left IN_QUEUE), jobs fail with `download_failed` / `engine_failed` naming the variant,
and each job tries the load again.

Results larger than a RunPod response can carry (RUNPOD_MAX_INLINE_BYTES, 9 MiB of base64 by
default) are refused with an error asking for an `output` upload spec, which returns a link.
Progress: one `progress_update` per denoising step, rate-limited by `PROGRESS_INTERVAL`
seconds (1.0). An unusable device (a CUDA error, or no CUDA under REQUIRE_CUDA=1) fails the
job with `refresh_worker`, so RunPod starts a fresh worker instead of sending it more jobs.
"""

from __future__ import annotations

import logging

from common.jobs import JobError, Progress, error_result, to_thread_stoppable, worker_version
from handlers.controlnet_pyworker.engine_holder import EngineHolder
from handlers.controlnet_pyworker.settings import Settings

log = logging.getLogger("controlnet.handler")

ENGINE = EngineHolder()   # settings and manifest from the environment, read on the first job


def get_engine():
    """The process-wide engine (created on first use from MODELS_DIR and the manifest)."""
    return ENGINE.get()


def _unusable(exc: JobError) -> dict:
    log.critical("FATAL: %s; asking RunPod for a fresh worker", exc)
    out = error_result(exc)
    out["worker_version"] = worker_version()
    out["refresh_worker"] = True
    return out


async def handler(job: dict) -> dict:
    """Async so that a RunPod cancel reaches it: the generation runs on a thread and is told to stop
    (at its next denoising step), instead of keeping the GPU busy for a result nobody waits for."""
    from handlers.controlnet_pyworker import service
    from handlers.controlnet_pyworker.engine import DeviceUnusable

    try:
        engine = get_engine()
    except DeviceUnusable as exc:
        return _unusable(exc)
    settings = engine.settings
    progress = Progress(job, min_interval=settings.progress_interval)
    try:
        out = await to_thread_stoppable(service.respond, job, engine,
                                        max_inline_bytes=settings.runpod_max_inline_bytes, progress=progress)
    finally:
        progress.close()
    if engine.broken:  # the GPU context is gone: RunPod replaces this worker after the job
        log.critical("FATAL: engine unusable (%s); asking RunPod for a fresh worker", engine.broken)
        out["refresh_worker"] = True
    return out


def preload() -> None:
    """Load PRELOAD_MODEL before the first job; a failure is logged, never raised (see the module doc)."""
    from handlers.controlnet_pyworker.engine import DeviceUnusable

    variant = None
    try:
        engine = get_engine()
        variant = engine.settings.preload_variant(engine.manifest.default_variant)
        if variant:
            engine.get(variant)
    except DeviceUnusable as exc:
        log.critical("FATAL: %s; every job will fail and ask RunPod for a fresh worker", exc)
    except Exception as exc:
        shown = str(exc) if isinstance(exc, JobError) else f"{type(exc).__name__}: {exc}"
        log.error("preload of '%s' failed: %s; the worker starts anyway and loads it again on the next job",
                  variant or "default variant", shown, exc_info=not isinstance(exc, JobError))


def main() -> None:
    from common import runpod_entry
    from common.redaction import configure_logging

    settings = Settings.from_env()
    configure_logging(settings.log_level)
    ENGINE.settings = settings
    if settings.runpod_worker_loop:
        preload()
    runpod_entry.start(handler)


if __name__ == "__main__":
    main()
