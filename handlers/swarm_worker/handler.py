"""RunPod handler of the swarm worker: checks the job names one of the actions of `SwarmAction`
(schema.py), boots SwarmUI and the gateway, and runs the action (actions.py).

`handler(job)` is a plain async function, so the legacy actions' replies are the job's `output`
object, which is what the legacy extension reads (`output.ready`, ...); a generator handler
would turn every output into a list.
"""

from __future__ import annotations

import asyncio
import logging

from common.jobs import JobError
from handlers.swarm_worker.actions import failure, runner_for
from handlers.swarm_worker.runtime import get_runtime
from handlers.swarm_worker.schema import ACTIONS

log = logging.getLogger("swarm.handler")


async def _boot() -> dict | None:
    """Start the gateway and SwarmUI if this process has not yet (local runs, tests)."""
    rt = get_runtime()
    try:
        await rt.call(rt.boot())
    except OSError as exc:
        return failure(JobError("engine_failed", f"cannot start the gateway: {exc}"))
    return None


async def handler(job: dict) -> dict:
    raw = job.get("input")
    if not isinstance(raw, dict):
        return failure(JobError("invalid_input", "input: expected a JSON object"))
    action = raw.get("action")
    run = runner_for(action) if isinstance(action, str) else None
    if run is None:
        return {"success": False, "error": f"Unknown action: {action}", "error_id": "unknown_action",
                "available_actions": list(ACTIONS)}
    if action != "shutdown":  # shutdown must never be what starts SwarmUI on a cold worker
        failed = await _boot()
        if failed:
            return failed
    try:
        return await run(job)
    except asyncio.CancelledError:
        log.info("job %s (%s) cancelled", job.get("id"), action)
        raise
