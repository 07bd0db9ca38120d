"""The worker's long-lived side: SwarmUI, the gateway, tokens, leases and legacy holds.

It runs on its own event loop in a background thread, so it is independent of whichever
loop calls the handler (RunPod's worker loop, the SDK's local test mode, a test) and can be
started at boot, before `runpod.serverless.start` takes over the main thread. Handlers call
into it with `await runtime.call(coro)`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import secrets
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from common.jobs import worker_version
from common.swarmui import SwarmUIError, SwarmUIUnavailable
from handlers.swarm_worker.config import WorkerConfig, worker_id
from handlers.swarm_worker.gateway import Gateway
from handlers.swarm_worker.swarm_files import build_model_tree, wipe_dir
from handlers.swarm_worker.swarm_process import SwarmProcess, SwarmStartError

log = logging.getLogger("swarm.runtime")

PROTOCOL = 2
T = TypeVar("T")
BUSY_KEYS = ("live_gens", "waiting_gens", "loading_models", "waiting_backends")


@dataclass
class Lease:
    number: int
    token: str
    idle_seconds: float
    startup_grace_seconds: float
    max_lease_seconds: float
    started: float = field(default_factory=time.monotonic)
    published: float | None = None
    last_active: float | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    stop_reason: str | None = None


class WorkerRuntime:
    def __init__(self, cfg: WorkerConfig):
        self.cfg = cfg
        self.worker_id = worker_id()
        self.version = worker_version()
        self.process = SwarmProcess(cfg)
        self.gateway = Gateway(host=cfg.public_host, port=cfg.public_port,
                               upstream=f"http://127.0.0.1:{cfg.internal_port}",
                               upstream_secret=lambda: self.process.internal_secret,
                               is_ready=lambda: self.process.ready, before_refresh=self.before_client_refresh,
                               ssl_context=cfg.server_ssl_context())
        self.legacy_token: str | None = None
        self.lease: Lease | None = None
        self._lease_ended: asyncio.Event | None = None  # set when the current lease ends (waiting lease jobs)
        self.lease_count = 0
        self.holds: set[asyncio.Event] = set()
        self._gateway_started = False
        self._boot_lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()

    # -- the runtime's own loop -----------------------------------------------------------------------

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._thread_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=loop.run_forever, name="swarm-runtime", daemon=True)
                self._thread.start()
                self._loop = loop
            return self._loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._ensure_loop())

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the runtime loop and await it from any other loop (cancellation propagates)."""
        return await asyncio.wrap_future(self.submit(coro))

    def start_background(self) -> concurrent.futures.Future:
        """Boot SwarmUI and the gateway without waiting (RunPod worker start, standalone mode)."""
        return self.submit(self.boot())

    def close(self, timeout: float = 30) -> None:
        """Stop SwarmUI, the gateway and the runtime loop (worker exit, tests)."""
        if self._loop is None:
            return
        try:
            self.submit(self._shutdown_all()).result(timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread:
                self._thread.join(5)
            self._loop = None

    async def _shutdown_all(self) -> None:
        if self.lease:
            await self.end_lease(self.lease, "worker_exit")
        for ev in list(self.holds):
            ev.set()
        if self._gateway_started:
            await self.gateway.stop()
        await self.process.stop()

    # -- boot -------------------------------------------------------------------------------------------

    async def boot(self) -> None:
        """Start the gateway (once) and SwarmUI (unless running); does not wait for SwarmUI."""
        if self._boot_lock is None:
            self._boot_lock = asyncio.Lock()
        async with self._boot_lock:
            if not self._gateway_started:
                if self.cfg.access_token:
                    self.gateway.allow(self.cfg.access_token, "env")
                await self.gateway.start()
                self._gateway_started = True
            if self.process.state == "stopped":
                self.process.start()

    async def ensure_ready(self) -> None:
        """SwarmUI is up and answers a request (one that has just crashed can look up for a moment)."""
        await self.boot()
        for attempt in (0, 1):
            # a little beyond the process manager's own deadline, so its clearer error wins
            await self.process.ensure_ready(self.cfg.startup_timeout + 5)
            try:
                await self.process.client.global_status()
                return
            except SwarmUIUnavailable:
                if attempt:
                    raise
                await self.process.wait_exit(5)

    # -- URLs and tokens --------------------------------------------------------------------------------

    async def legacy_info(self) -> dict:
        """`public_url` (with the token path) and, once SwarmUI is up, a `session_id`."""
        info: dict[str, Any] = {"public_url": self.legacy_public_url(), "session_id": None}
        if self.process.ready:
            try:
                info["session_id"] = await self.process.client.session_id()
            except SwarmUIError as exc:
                log.warning("no session for the wakeup reply: %s", exc)
        return info

    def legacy_public_url(self) -> str:
        """`<base>/t/<token>`: the legacy extension appends `/API/...` to it, carrying the token."""
        token = self.cfg.access_token
        if token is None:
            if self.legacy_token is None:
                self.legacy_token = secrets.token_urlsafe(32)
                self.gateway.allow(self.legacy_token, "legacy")
            token = self.legacy_token
        return f"{self.cfg.public_base_url()}/t/{token}"

    # -- SwarmUI activity -------------------------------------------------------------------------------

    async def swarm_busy(self) -> bool:
        """Busy = SwarmUI has generations live or queued, models or backends loading, or a generation
        request is passing through the gateway. Plain HTTP polling does not count. A status check that
        fails counts as busy: a SwarmUI too loaded to answer must not be released as idle."""
        if self.gateway.generations_in_flight > 0:
            return True
        if not self.process.ready:
            return False
        try:
            status = (await self.process.client.global_status()).get("status") or {}
            return any(int(status.get(k) or 0) > 0 for k in BUSY_KEYS)
        except (SwarmUIError, ValueError, TypeError, AttributeError) as exc:
            log.warning("GetGlobalStatus failed, counted as busy: %s", exc)
            return True

    async def _activity_since(self, since: float) -> bool:
        last_gen = self.gateway.last_generation_at
        return await self.swarm_busy() or (last_gen is not None and last_gen >= since)

    # -- leases (protocol 2) ------------------------------------------------------------------------------

    def _clamp(self, value: float | None, default: float) -> float:
        v = default if value is None else float(value)
        return max(self.cfg.lease_min_seconds, min(self.cfg.lease_cap_seconds, v))

    def lease_limits(self, idle: float | None, grace: float | None, max_lease: float | None) -> dict[str, float]:
        return {
            "idle_seconds": self._clamp(idle, self.cfg.idle_seconds),
            "startup_grace_seconds": self._clamp(grace, self.cfg.startup_grace_seconds),
            "max_lease_seconds": self._clamp(max_lease, self.cfg.max_lease_seconds),
        }

    async def begin_lease(self, idle: float | None, grace: float | None,
                          max_lease: float | None) -> tuple[Lease | None, dict]:
        """Claim the worker for one lease and wait for SwarmUI; returns (lease, first output).

        A lease job that finds the worker leased waits for that lease to end instead of failing: it
        can only get here when the SDK took two leases in one batch, before the concurrency modifier
        dropped to 1 (see __main__.concurrency_modifier)."""
        if self.lease is not None:
            log.warning("a lease job arrived while lease %d holds this worker: it waits for that lease to end",
                        self.lease.number)
        while self.lease is not None:
            if self._lease_ended is None:
                self._lease_ended = asyncio.Event()
            await self._lease_ended.wait()
        limits = self.lease_limits(idle, grace, max_lease)
        self.lease_count += 1
        lease = Lease(number=self.lease_count, token=secrets.token_urlsafe(48), **limits)
        self.lease = lease
        # The per-worker legacy token belongs to no lease: it is refused (and its WebSockets closed)
        # until the lease ends. A fixed token from the environment stays valid (documented).
        await self.gateway.suspend("legacy")
        try:
            await self.ensure_ready()
        except asyncio.CancelledError:  # the lease job was cancelled while SwarmUI was starting
            await self.end_lease(lease, "cancelled")
            raise
        except (SwarmStartError, OSError) as exc:
            await self.end_lease(lease, "swarmui_failed")
            tail = exc.tail[-15:] if isinstance(exc, SwarmStartError) else []
            return None, {"released": True, "reason": "swarmui_failed", "success": False,
                          "error": f"engine_failed: SwarmUI did not start: {exc}", "log_tail": tail}
        self.gateway.allow(lease.token, "lease")
        lease.published = time.monotonic()
        log.info("lease %d started (idle %.0fs, grace %.0fs, max %.0fs)", lease.number, lease.idle_seconds,
                 lease.startup_grace_seconds, lease.max_lease_seconds)
        return lease, {
            "success": True,
            "public_url": self.cfg.public_base_url(),
            "token": lease.token,
            "worker_id": self.worker_id,
            "lease": lease.number,
            "version": self.version,
            "protocol": PROTOCOL,
            **limits,
        }

    async def watch_lease(self, lease: Lease) -> dict:
        """Hold the lease until idle, startup grace or max lifetime (never cutting a generation)."""
        reason = "cancelled"
        try:
            reason = await self._lease_loop(lease)
        finally:
            await self.end_lease(lease, reason)
        held = round(time.monotonic() - lease.started, 2)
        return {"released": True, "reason": reason, "lease": lease.number, "held_seconds": held,
                "worker_id": self.worker_id}

    async def _lease_loop(self, lease: Lease) -> str:
        assert lease.published is not None
        checked = lease.published
        while True:
            now = time.monotonic()
            if lease.stop.is_set():
                return lease.stop_reason or "released"
            if self.process.state == "failed":
                return "swarmui_exited"
            if await self._activity_since(checked):
                lease.last_active = now
            checked = now
            busy_now = lease.last_active == now
            age = now - lease.published
            if age >= lease.max_lease_seconds and not busy_now:
                return "max_lifetime"
            if lease.last_active is None and age >= lease.startup_grace_seconds and not busy_now:
                return "startup_grace_expired"
            if lease.last_active is not None and now - lease.last_active >= lease.idle_seconds:
                return "idle"
            try:
                await asyncio.wait_for(lease.stop.wait(), self.cfg.idle_poll_seconds)
            except asyncio.TimeoutError:
                pass

    async def end_lease(self, lease: Lease, reason: str) -> None:
        """Revoke the token, close its WebSockets, stop its generations, wipe SwarmUI's outputs.

        Only the sessions the lease generated with are interrupted: a `generate` job running beside
        the lease is left alone."""
        if self.lease is not lease:
            return
        closed = await self.gateway.revoke(lease.token)
        self.gateway.resume("legacy")
        sessions = self.gateway.sessions.pop(lease.token)
        if reason in ("cancelled", "worker_exit") and self.process.ready:
            for sid in sessions:
                await self.process.client.interrupt_session(sid)
        wiped = wipe_dir(self.cfg.swarm_output_dir)
        self.lease = None
        if self._lease_ended is not None:
            self._lease_ended.set()
            self._lease_ended = None
        log.info("lease %d released (%s): token revoked, %d WebSocket(s) closed, %d session(s) interrupted, "
                 "%d output entries wiped", lease.number, reason, closed,
                 len(sessions) if reason in ("cancelled", "worker_exit") else 0, wiped)

    # -- legacy holds ---------------------------------------------------------------------------------------

    async def hold(self, duration: float, interval: float, *, until_ready: bool = False) -> dict:
        """Keep this job (and so the worker) alive for `duration` s, or until `shutdown`; a generation
        still running at the end extends the hold (up to the hold cap). With `until_ready` the hold
        also ends as soon as SwarmUI is ready (or has failed for good)."""
        duration = max(0.0, min(float(duration), self.cfg.hold_cap_seconds))
        interval = max(0.05, float(interval))
        event = asyncio.Event()
        self.holds.add(event)
        start = time.monotonic()
        checks, healthy, reason = 0, self.process.ready, "completed"
        try:
            while True:
                if until_ready and self.process.state in ("ready", "failed"):
                    reason = "ready" if self.process.ready else "swarmui_failed"
                    break
                elapsed = time.monotonic() - start
                if elapsed >= duration:
                    if elapsed < self.cfg.hold_cap_seconds and await self.swarm_busy():
                        await asyncio.sleep(min(interval, self.cfg.idle_poll_seconds))
                        continue
                    break
                wait = min(interval, duration - elapsed)
                try:
                    await asyncio.wait_for(event.wait(), min(wait, 0.25) if until_ready else wait)
                    reason = "shutdown"
                    break
                except asyncio.TimeoutError:
                    if not until_ready:
                        checks += 1
                        healthy = await self.healthy()
        finally:
            self.holds.discard(event)
        return {"reason": reason, "held_seconds": round(time.monotonic() - start, 2), "checks": checks,
                "healthy": self.process.ready if until_ready else healthy}

    async def release_holds(self) -> int:
        """`shutdown`: end every hold. The legacy token stays valid: with several generations in flight
        (the extension's MaxConcurrent) one request's shutdown must not cut the others off, and whoever
        can send jobs can ask `ready` for the token anyway."""
        count = len(self.holds)
        for ev in list(self.holds):
            ev.set()
        return count

    # -- status -------------------------------------------------------------------------------------------------

    async def healthy(self) -> bool:
        if not self.process.ready:
            return False
        try:
            await asyncio.wait_for(self.process.client.global_status(), 10)
            return True
        except (SwarmUIError, asyncio.TimeoutError):
            return False

    async def status(self) -> dict:
        global_status = None
        if self.process.ready:
            try:
                global_status = await self.process.client.global_status()
            except SwarmUIError as exc:
                global_status = {"error": str(exc)}
        lease = None
        if self.lease:
            lease = {"lease": self.lease.number, "age_seconds": round(time.monotonic() - self.lease.started, 1),
                     "idle_seconds": self.lease.idle_seconds, "max_lease_seconds": self.lease.max_lease_seconds}
        return {"swarmui": self.process.describe(), "global_status": global_status, "lease": lease,
                "holds": len(self.holds), "gateway": {"port": self.cfg.public_port,
                                                      "websockets": self.gateway.open_websockets()}}

    async def refresh_model_tree(self) -> dict[str, int]:
        """Bring the per-worker model tree up to date with the volume; a change makes SwarmUI's model
        list (held in memory since its last scan) stale."""
        stats = await asyncio.to_thread(build_model_tree, self.cfg.model_roots, self.cfg.model_tree)
        if stats["linked"] or stats["removed"]:
            self.process.models_stale = True
        return stats

    async def before_client_refresh(self) -> None:
        """A `TriggerRefresh` passing the gateway: new volume files join the model tree first, and the
        request waits out SwarmUI's refresh debounce when there is something new to see."""
        await self.refresh_model_tree()
        await self.process.before_forwarded_refresh()

    async def models(self, subtypes: list[str]) -> dict:
        await self.ensure_ready()
        tree = await self.refresh_model_tree()
        client = self.process.client
        if self.process.models_stale:
            await self.process.refresh_models()
        found = {}
        for subtype in subtypes:
            found[subtype] = (await client.list_models(subtype)).names
        return {"models": found, "model_roots": [str(p) for p in self.cfg.model_roots], "tree": tree}


_runtime: WorkerRuntime | None = None
_runtime_lock = threading.Lock()


def get_runtime() -> WorkerRuntime:
    """The process-wide runtime, configured from the environment on first use."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = WorkerRuntime(WorkerConfig.from_env())
        return _runtime


def close_runtime() -> None:
    """Stop and forget the process-wide runtime (worker exit; tests switch configurations)."""
    global _runtime
    with _runtime_lock:
        rt, _runtime = _runtime, None
    if rt is not None:
        rt.close()
