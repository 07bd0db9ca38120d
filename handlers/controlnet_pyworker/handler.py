"""RunPod handler: the job input is a /generate body; the engine runs in this process.
A cancelled job stops its generation at the next denoising step.

Results larger than a RunPod response can carry (RUNPOD_MAX_INLINE_BYTES, 9 MiB of base64 by
default) are refused with an error asking for an `output` upload spec, which returns a link.
Progress: one `progress_update` per denoising step, rate-limited by `PROGRESS_INTERVAL`
seconds (1.0). A CUDA error that leaves the device unusable fails the job with
`refresh_worker`, so RunPod starts a fresh worker instead of sending it more jobs.
"""

from __future__ import annotations

import logging
import os
import threading

from common.jobs import Progress, to_thread_stoppable

log = logging.getLogger("controlnet.handler")

_engine = None
_engine_lock = threading.Lock()


def get_engine():
    """The process-wide engine (created on first use from MODELS_DIR and the manifest)."""
    global _engine
    with _engine_lock:
        if _engine is None:
            from handlers.controlnet_pyworker import manifest
            from handlers.controlnet_pyworker.engine import Engine

            _engine = Engine(manifest.load(), manifest.models_dir())
        return _engine


async def handler(job: dict) -> dict:
    """Async so that a RunPod cancel reaches it: the generation runs on a thread and is told to stop
    (at its next denoising step), instead of keeping the GPU busy for a result nobody waits for."""
    from handlers.controlnet_pyworker import service

    progress = Progress(job, min_interval=float(os.environ.get("PROGRESS_INTERVAL", "1.0")))
    engine = get_engine()
    try:
        out = await to_thread_stoppable(service.respond, job, engine,
                                        max_inline_bytes=service.RUNPOD_MAX_INLINE_BYTES, progress=progress)
    finally:
        progress.close()
    if engine.broken:  # the GPU context is gone: RunPod replaces this worker after the job
        log.error("engine unusable (%s); asking RunPod for a fresh worker", engine.broken)
        out["refresh_worker"] = True
    return out
