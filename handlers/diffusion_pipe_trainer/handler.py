"""RunPod adapter of the trainer: the job runs in pipeline.py; this maps it onto the SDK's handler."""

from __future__ import annotations

from common.jobs import run_job_async
from handlers.diffusion_pipe_trainer import pipeline


async def handler(job: dict) -> dict:
    result = await run_job_async(job, pipeline.run)
    if result.get("error_code") in ("engine_failed", "timeout"):
        # a crashed or killed engine may leave GPU memory or ports behind: start the next job on a fresh worker
        result["refresh_worker"] = True
    return result
