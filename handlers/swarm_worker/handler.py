"""RunPod handler of the swarm worker: leases (protocol 2), the legacy extension's actions,
and `generate` / `models` / `status`.

`handler(job)` is a plain async function, so the legacy actions' replies are the job's
`output` object, which is what the legacy extension reads (`output.ready`, ...); a
generator handler would turn every output into a list. The lease is streamed all the same:
`lease_session(job)` yields the lease's first output, which the handler posts to the job's
stream (the same POST a generator's yield makes) and as a progress update, then the release.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, ValidationError

from common.jobs import (
    JobError,
    Progress,
    error_result,
    invalid_input,
    parse_input,
    run_job_async,
    running_on_runpod,
)
from common.swarmui import SwarmUIError
from handlers.swarm_worker.generate import run_generate
from handlers.swarm_worker.runtime import PROTOCOL, get_runtime
from handlers.swarm_worker.schema import ACTIONS, GenerateInput, HoldInput, LeaseInput, ModelsInput
from handlers.swarm_worker.swarm_process import SwarmStartError

log = logging.getLogger("swarm.handler")


def _invalid(model: type[BaseModel], raw: dict) -> BaseModel | dict:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        return {"success": False, **error_result(invalid_input(exc))}


async def _boot() -> dict | None:
    """Start the gateway and SwarmUI if this process has not yet (local runs, tests)."""
    rt = get_runtime()
    try:
        await rt.call(rt.boot())
    except OSError as exc:
        return {"success": False, **error_result(JobError("engine_failed", f"cannot start the gateway: {exc}"))}
    return None


async def lease_session(job: dict) -> AsyncIterator[dict]:
    """The lease as a stream: first output (public_url, token, limits), then `{"released": true, ...}`."""
    req = _invalid(LeaseInput, job["input"])
    if isinstance(req, dict):
        yield req
        return
    rt = get_runtime()
    lease, first = await rt.call(rt.begin_lease(req.idle_seconds, req.startup_grace_seconds, req.max_lease_seconds))
    if lease is None:
        yield first
        return
    try:
        yield first
        yield await rt.call(rt.watch_lease(lease))
    finally:
        if rt.lease is lease:  # the consumer stopped early (job cancelled): release now
            rt.submit(rt.end_lease(lease, "cancelled"))


async def _publish_stream(job: dict, item: dict) -> None:
    """Post one streamed output for this job, as the SDK does for a generator's yield."""
    if not running_on_runpod():
        return
    import runpod
    from runpod.http_client import AsyncClientSession
    from runpod.serverless.modules.rp_http import stream_result

    async with AsyncClientSession() as session:
        await stream_result(session, {"output": item}, job)
    runpod.serverless.progress_update(job, item)


async def _lease(job: dict) -> dict:
    last: dict = {}
    first = True
    async for item in lease_session(job):
        if first and item.get("token"):
            await _publish_stream(job, item)
        first = False
        last = item
    return last


async def _hold(job: dict) -> dict:
    req = _invalid(HoldInput, job["input"])
    if isinstance(req, dict):
        return req
    rt = get_runtime()
    # The legacy extension awaits its wakeup job before it polls `ready`: by default wakeup holds the
    # worker through SwarmUI's boot (at most `duration`) instead of making every generation wait it out.
    until_ready = req.action == "wakeup" and rt.cfg.wakeup_hold == "ready"
    held = await rt.call(rt.hold(req.duration, req.interval, until_ready=until_ready))
    out = {"success": True, "action": req.action, "worker_id": rt.worker_id, "version": rt.version,
           "ready": rt.process.ready, **held}
    if req.action == "wakeup":
        # What a wakeup answered "once SwarmUI is up" in the first worker generation: its address and session.
        out.update(await rt.call(rt.legacy_info()))
    if held["reason"] == "swarmui_failed":
        out.update(success=False, error=f"engine_failed: SwarmUI did not start: {rt.process.error}",
                   log_tail=rt.process.tail(15))
    return out


async def _ready(job: dict) -> dict:
    rt = get_runtime()

    async def ready() -> dict:
        out: dict[str, Any] = {"ready": False, "public_url": rt.legacy_public_url(), "session_id": None,
                               "worker_id": rt.worker_id, "version": rt.version}
        try:
            await rt.ensure_ready()
            out["session_id"] = await rt.process.client.session_id()
            out["ready"] = True
        except SwarmStartError as exc:
            out["error"] = f"engine_failed: SwarmUI did not start: {exc}"
            out["log_tail"] = exc.tail[-15:]
        except Exception as exc:  # a reply the extension can show, not a traceback
            out["error"] = f"engine_failed: SwarmUI is not answering: {exc}"
        return out

    return await rt.call(ready())


async def _health(job: dict) -> dict:
    rt = get_runtime()
    healthy = await rt.call(rt.healthy())
    return {"success": True, "healthy": healthy, "worker_id": rt.worker_id, "version": rt.version,
            "protocol": PROTOCOL, "swarmui": rt.process.state, "lease_active": rt.lease is not None}


async def _shutdown(job: dict) -> dict:
    rt = get_runtime()
    released = await rt.call(rt.release_holds())
    return {"success": True, "released_holds": released, "worker_id": rt.worker_id,
            "lease_active": rt.lease is not None}


async def _status(job: dict) -> dict:
    rt = get_runtime()
    status = await rt.call(rt.status())
    return {"success": True, "worker_id": rt.worker_id, "version": rt.version, "protocol": PROTOCOL, **status}


async def _models(job: dict) -> dict:
    req = _invalid(ModelsInput, job["input"])
    if isinstance(req, dict):
        return req
    rt = get_runtime()
    try:
        return {"success": True, **await rt.call(rt.models(list(req.subtypes)))}
    except SwarmStartError as exc:
        return {"success": False, **error_result(JobError("engine_failed", f"SwarmUI is not available: {exc}",
                                                          exc.tail[-15:]))}
    except SwarmUIError as exc:
        return {"success": False, **error_result(JobError("engine_failed", f"SwarmUI could not list models: {exc}"))}


async def _generate(job: dict) -> dict:
    rt = get_runtime()

    async def body(job: dict, timings) -> dict:
        req = parse_input(GenerateInput, job["input"])
        if req.output is not None:
            from common.uploads import check  # a method without its settings fails before generating

            check(req.output)
        progress = Progress(job)
        try:
            return await rt.call(run_generate(rt, job, req, timings, progress))
        finally:
            progress.close()

    result = await run_job_async(job, body)
    if result.get("error_code") == "engine_failed" and rt.process.state == "failed":
        result["refresh_worker"] = True  # SwarmUI is gone for good on this worker: ask for a fresh one
    return result


HANDLERS = {
    "lease": _lease,
    "wakeup": _hold,
    "keepalive": _hold,
    "ready": _ready,
    "health": _health,
    "shutdown": _shutdown,
    "status": _status,
    "models": _models,
    "generate": _generate,
}
assert set(HANDLERS) == set(ACTIONS)


async def handler(job: dict) -> dict:
    raw = job.get("input")
    if not isinstance(raw, dict):
        return {"success": False, **error_result(JobError("invalid_input", "input: expected a JSON object"))}
    action = raw.get("action")
    fn = HANDLERS.get(action) if isinstance(action, str) else None
    if fn is None:
        return {"success": False, "error": f"Unknown action: {action}", "error_id": "unknown_action",
                "available_actions": list(ACTIONS)}
    if action != "shutdown":  # shutdown must never be what starts SwarmUI on a cold worker
        failed = await _boot()
        if failed:
            return failed
    try:
        return await fn(job)
    except asyncio.CancelledError:
        log.info("job %s (%s) cancelled", job.get("id"), action)
        raise
