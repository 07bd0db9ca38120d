"""What each action of the swarm worker does, one runner per input model of `SwarmAction`
(`runner_for(action)`): leases (protocol 2), the legacy extension's holds and probes, and
`generate` / `models` / `status`.

The lease is streamed: `lease_session(job)` yields the lease's first output, which the lease
runner posts to the job's stream (the same POST a generator handler's yield makes) and as a
progress update, then the release, which is the job's output.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

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
from handlers.swarm_worker.leases import PROTOCOL
from handlers.swarm_worker.runtime import get_runtime
from handlers.swarm_worker.schema import (
    ACTION_MODELS,
    GenerateInput,
    HoldInput,
    LeaseInput,
    ModelsInput,
    PlainInput,
)
from handlers.swarm_worker.swarm_process import SwarmStartError

Runner = Callable[[dict], Awaitable[dict]]
log = logging.getLogger("swarm.actions")
M = TypeVar("M", bound=BaseModel)
_RUNNERS: dict[tuple[type[BaseModel], str | None], Runner] = {}


def _runs(model: type[BaseModel], action: str | None = None) -> Callable[[Runner], Runner]:
    """Register the runner of `model`'s actions (of one of them when `action` is given)."""
    def register(fn: Runner) -> Runner:
        _RUNNERS[(model, action)] = fn
        return fn
    return register


def runner_for(action: str) -> Runner | None:
    """The runner of a known action; None for an unknown one."""
    model = ACTION_MODELS.get(action)
    if model is None:
        return None
    return _RUNNERS.get((model, action)) or _RUNNERS.get((model, None))


def failure(error: JobError) -> dict:
    """A failed action other than `generate` (whose failures are the common error result)."""
    return {"success": False, **error_result(error)}


def _parsed(model: type[M], job: dict) -> M | dict:
    """The validated input, or the failure naming each bad field (legacy inputs fail softly)."""
    try:
        return model.model_validate(job["input"])
    except ValidationError as exc:
        return failure(invalid_input(exc))


async def lease_session(job: dict) -> AsyncIterator[dict]:
    """The lease as a stream: first output (public_url, token, limits), then `{"released": true, ...}`."""
    req = _parsed(LeaseInput, job)
    if isinstance(req, dict):
        yield req
        return
    rt = get_runtime()
    leases = rt.leases
    owner = f"{job.get('id')}/{secrets.token_hex(8)}"
    try:
        lease, first = await rt.call(leases.begin(req.idle_seconds, req.startup_grace_seconds,
                                                  req.max_lease_seconds, owner=owner))
    except asyncio.CancelledError:
        # A grant in progress is cancelled with the job and releases itself in `begin`; one that completed
        # in this instant is held by a lease this job never saw: release it by owner. (Queued after the
        # grant's cancellation on the runtime loop, so it runs once `begin` is done either way.)
        rt.submit(leases.release_owned(owner, "cancelled")).add_done_callback(_log_failure)
        raise
    if lease is None:
        yield first
        return
    try:
        yield first
        yield await rt.call(leases.watch(lease))
    finally:
        if leases.current is lease:  # the consumer stopped early (job cancelled): release now
            rt.submit(leases.end(lease, "cancelled")).add_done_callback(_log_failure)


def _log_failure(done: concurrent.futures.Future) -> None:
    """A release nobody awaits must not fail silently (the lease would stay held)."""
    if not done.cancelled() and done.exception() is not None:
        log.error("releasing the lease failed: %r", done.exception(), exc_info=done.exception())


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


@_runs(LeaseInput)
async def _lease(job: dict) -> dict:
    last: dict = {}
    first = True
    # aclosing: a cancel that lands here (while the first output is posted) closes the lease session at
    # once, which releases the lease; an unclosed generator would keep it until garbage collection.
    async with contextlib.aclosing(lease_session(job)) as session:
        async for item in session:
            if first and item.get("token"):
                await _publish_stream(job, item)
            first = False
            last = item
    return last


@_runs(HoldInput)
async def _hold(job: dict) -> dict:
    req = _parsed(HoldInput, job)
    if isinstance(req, dict):
        return req
    rt = get_runtime()
    # The legacy extension awaits its wakeup job before it polls `ready`: by default wakeup holds the
    # worker through SwarmUI's boot (at most `duration`) instead of making every generation wait it out.
    until_ready = req.action == "wakeup" and rt.cfg.wakeup_hold == "ready"
    held = await rt.call(rt.holds.hold(req.duration, req.interval, until_ready=until_ready))
    out = {"success": True, "action": req.action, "worker_id": rt.worker_id, "version": rt.version,
           "ready": rt.process.ready, **held}
    if req.action == "wakeup":
        # What a wakeup answered "once SwarmUI is up" in the first worker generation: its address and session.
        out.update(await rt.call(rt.legacy_info()))
    if held["reason"] == "swarmui_failed":
        out.update(success=False, error=f"engine_failed: SwarmUI did not start: {rt.process.error}",
                   log_tail=rt.process.tail(15))
    return out


@_runs(PlainInput, "ready")
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


@_runs(PlainInput, "health")
async def _health(job: dict) -> dict:
    rt = get_runtime()
    healthy = await rt.call(rt.healthy())
    return {"success": True, "healthy": healthy, "worker_id": rt.worker_id, "version": rt.version,
            "protocol": PROTOCOL, "swarmui": rt.process.state, "lease_active": rt.leases.current is not None}


@_runs(PlainInput, "shutdown")
async def _shutdown(job: dict) -> dict:
    rt = get_runtime()
    released = await rt.call(rt.holds.release_all())
    return {"success": True, "released_holds": released, "worker_id": rt.worker_id,
            "lease_active": rt.leases.current is not None}


@_runs(PlainInput, "status")
async def _status(job: dict) -> dict:
    rt = get_runtime()
    status = await rt.call(rt.status())
    return {"success": True, "worker_id": rt.worker_id, "version": rt.version, "protocol": PROTOCOL, **status}


@_runs(ModelsInput)
async def _models(job: dict) -> dict:
    req = _parsed(ModelsInput, job)
    if isinstance(req, dict):
        return req
    rt = get_runtime()
    try:
        return {"success": True, **await rt.call(rt.models(list(req.subtypes)))}
    except SwarmStartError as exc:
        return failure(JobError("engine_failed", f"SwarmUI is not available: {exc}", exc.tail[-15:]))
    except SwarmUIError as exc:
        return failure(JobError("engine_failed", f"SwarmUI could not list models: {exc}"))


@_runs(GenerateInput)
async def _generate(job: dict) -> dict:
    rt = get_runtime()

    async def body(job: dict, timings) -> dict:
        # validated inside the job contract: input secrets are registered first, a failure is the error result
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


assert all(runner_for(a) for a in ACTION_MODELS), "every action of SwarmAction has a runner"
