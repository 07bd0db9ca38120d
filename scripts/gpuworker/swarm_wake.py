"""Waking a swarm-worker on a RunPod endpoint and releasing it.

Two ways, as the worker speaks both: a `lease` job (protocol 2), whose first output names the
URL and a fresh token of the very worker that runs it, or the legacy extension's `keepalive` /
`wakeup` hold followed by `ready` polls. Both return the same `info` record (`url` with the token
path, `hold_job_id`, `protocol`), which `release` and `release_hint` take.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from scripts.gpuworker.console import CliError, Console
from scripts.gpuworker.runpod_api import TERMINAL, Endpoint, clean_error, progress_of


def _action_output(status: dict, action: str) -> dict:
    """The reply of a finished legacy action; a FAILED job (the SDK turns a reply's `error` into one)
    raises with its message."""
    if status.get("status") == "FAILED":
        raise CliError(f"{action}: {clean_error(status.get('error')) or 'the job failed'}")
    out = status.get("output")
    return out if isinstance(out, dict) else {}


def _runsync_action(endpoint: Endpoint, action: dict, *, deadline: float, poll: float) -> dict | None:
    """One legacy action through /runsync, followed via /status if it outlives the sync wait.

    Returns the final status, or None when the job is still queued at the deadline (cold endpoint)."""
    remaining = deadline - time.monotonic()
    status = endpoint.runsync({"input": action}, wait_ms=int(min(max(remaining, 1), 90) * 1000))
    if status.get("status") not in TERMINAL and status.get("id"):
        try:
            status = endpoint.follow(status["id"], poll=poll, timeout=max(1.0, deadline - time.monotonic()))
        except CliError as exc:
            if exc.code == 3:
                return None
            raise
    return status


def wake_lease(console: Console, endpoint: Endpoint, *, max_seconds: float | None, idle: float | None,
               timeout: float, poll: float) -> dict:
    """Start a `lease` job (protocol 2) and wait for its first streamed output: the URL and a fresh token
    of the very worker that runs the job. The job holds that worker until SwarmUI has been idle for
    `idle` seconds (or unused for the worker's startup grace, or `max_seconds` passed), or it is cancelled."""
    started = time.monotonic()
    deadline = started + timeout
    limits = {"max_lease_seconds": max_seconds, "idle_seconds": idle}
    job_id = endpoint.run({"input": {"action": "lease", **{k: v for k, v in limits.items() if v is not None}}})["id"]
    console.note(f"lease job {job_id} asks for a worker")
    release = f"`gpuworker runpod cancel {endpoint.endpoint_id} {job_id}`"
    hint = f"the lease job {job_id} may still start and hold a worker: {release}"
    with console.left_running(hint), console.progress() as bar:
        task = bar.add_task("waking", total=None, status="waiting for a worker")
        while True:
            # the worker posts its address to the job's stream and as its progress: take whichever shows first
            status = endpoint.status(job_id)
            chunk = endpoint.stream(job_id).get("stream") or []
            items = [i.get("output") if isinstance(i, dict) else None for i in chunk]
            for out in [*items, progress_of(status)]:
                if isinstance(out, dict) and out.get("token") and out.get("public_url"):
                    bar.update(task, status="ready")
                    base = str(out["public_url"]).rstrip("/")
                    return {"ready": True, "protocol": 2, "url": f"{base}/t/{out['token']}", "public_url": base,
                            "token": out["token"], "worker_id": out.get("worker_id"), "version": out.get("version"),
                            "limits": {k: out.get(k) for k in ("idle_seconds", "startup_grace_seconds",
                                                               "max_lease_seconds")},
                            "hold_job_id": job_id, "waited_s": round(time.monotonic() - started, 1)}
            if status.get("status") in TERMINAL:
                out = status.get("output") if isinstance(status.get("output"), dict) else {}
                reason = (clean_error(status.get("error")) or out.get("error") or out.get("reason")
                          or "it returned no address")
                if "already holds lease" in reason:  # the job reached a worker another lease holds
                    reason += (" (with SWARM_WORKER_CONCURRENCY=1 on the endpoint, a leased worker takes no more "
                               "jobs and queued leases wait for, or scale out to, a free one)")
                raise CliError(f"the lease job {job_id} ended {status.get('status')} before its worker was ready: "
                               f"{reason}")
            bar.update(task, status="worker starting" if status.get("status") == "IN_PROGRESS" else "queued")
            if time.monotonic() >= deadline:
                raise CliError(f"no ready worker after {timeout:g} s; the lease job {job_id} may still start one: "
                               f"{release}", 3)
            time.sleep(poll)


def wake_legacy(console: Console, endpoint: Endpoint, *, duration: float, interval: float, timeout: float,
                poll: float, action: str = "keepalive") -> dict:
    """The legacy extension's way: hold a worker with a keepalive (or wakeup) job, then poll `ready`
    until SwarmUI answers. On an endpoint with several workers `ready` may come from another one."""
    started = time.monotonic()
    deadline = started + timeout
    hold_id = endpoint.run({"input": {"action": action, "duration": duration, "interval": interval}})["id"]
    console.note(f"{action} job {hold_id} holds a worker for up to {duration:g} s")
    last = ""
    release = f"`gpuworker swarm shutdown {endpoint.endpoint_id} --cancel {hold_id}`"
    hint = f"the {action} job {hold_id} may still hold a worker: {release}"
    with console.left_running(hint), console.progress() as bar:
        task = bar.add_task("waking", total=None, status="waiting for a worker")
        while True:
            held = endpoint.status(hold_id)
            if held.get("status") in ("FAILED", "CANCELLED", "TIMED_OUT"):
                raise CliError(f"the {action} job {hold_id} ended {held['status']}: "
                               f"{clean_error(held.get('error')) or 'no message'}")
            status = _runsync_action(endpoint, {"action": "ready"}, deadline=deadline, poll=poll)
            if status is not None:
                if status.get("status") == "FAILED":
                    reply, error = {}, clean_error(status.get("error"))
                else:
                    reply = _action_output(status, "ready")
                    error = str(reply.get("error") or "")
                if reply.get("ready") and reply.get("public_url"):
                    bar.update(task, status="ready")
                    return {"ready": True, "protocol": 1, "url": reply["public_url"],
                            "public_url": reply["public_url"], "session_id": reply.get("session_id"),
                            "worker_id": reply.get("worker_id"), "version": reply.get("version"),
                            "hold_job_id": hold_id, "waited_s": round(time.monotonic() - started, 1)}
                if "did not start" in error:
                    raise CliError(f"the worker's SwarmUI did not start: {error}")
                last = error or "SwarmUI starting"
                bar.update(task, status=last[:60])
                if bar.disable:
                    console.note(f"not ready yet: {last}")
            if time.monotonic() >= deadline:
                raise CliError(f"no ready worker after {timeout:g} s (last: {last or 'queued'}); the {action} job "
                               f"{hold_id} may still hold a worker: {release}", 3)
            time.sleep(poll)


def wake(console: Console, endpoint: Endpoint, args: argparse.Namespace, *, duration: float,
         timeout: float) -> dict:
    if args.protocol == "legacy":
        return wake_legacy(console, endpoint, duration=duration, interval=args.interval, timeout=timeout,
                           poll=args.poll, action=args.action)
    return wake_lease(console, endpoint, max_seconds=duration, idle=args.idle, timeout=timeout, poll=args.poll)


def release_hint(endpoint_id: str, info: dict) -> str:
    job_id = info["hold_job_id"]
    if info["protocol"] == 2:
        limits = info.get("limits") or {}
        until = (f" until SwarmUI is idle for {limits['idle_seconds']:g} s, at most {limits['max_lease_seconds']:g} s"
                 if limits.get("idle_seconds") and limits.get("max_lease_seconds") else "")
        return f"the lease holds (and bills) the worker{until}; end it now with: gpuworker runpod cancel {endpoint_id} {job_id}"
    return (f"the worker stays held (and billed) while the hold job runs; release it with: "
            f"gpuworker swarm shutdown {endpoint_id} --cancel {job_id}")


def release(endpoint: Endpoint, info: dict, poll: float) -> None:
    """End the hold: cancelling a lease ends it on its worker (token revoked, outputs wiped); the legacy
    way also sends the `shutdown` action for the worker's other holds."""
    if info["protocol"] == 2:
        endpoint.cancel(info["hold_job_id"])
    else:
        shutdown(endpoint, cancel=[info["hold_job_id"]], timeout=60, poll=poll)


def shutdown(endpoint: Endpoint, *, cancel: list[str], timeout: float, poll: float) -> dict:
    status = _runsync_action(endpoint, {"action": "shutdown"}, deadline=time.monotonic() + timeout, poll=poll)
    out = _action_output(status, "shutdown") if status is not None else {"queued": True}
    result: dict[str, Any] = {**out, "success": bool(out.get("success"))}
    result["cancelled"] = {job_id: endpoint.cancel(job_id).get("status") for job_id in cancel}
    return result
