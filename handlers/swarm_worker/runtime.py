"""The worker's long-lived side: SwarmUI, the gateway and the legacy token, tying together the
leases (leases.py) and the legacy holds (holds.py) that keep the worker.

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
import signal
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from common.jobs import worker_version
from common.swarmui import SwarmUIError, SwarmUIUnavailable
from handlers.swarm_worker.config import WorkerConfig
from handlers.swarm_worker.gateway import Gateway
from handlers.swarm_worker.holds import Holds
from handlers.swarm_worker.leases import Leases
from handlers.swarm_worker.swarm_files import build_model_tree
from handlers.swarm_worker.swarm_process import SwarmProcess

log = logging.getLogger("swarm.runtime")

T = TypeVar("T")
BUSY_KEYS = ("live_gens", "waiting_gens", "loading_models", "waiting_backends")


class WorkerRuntime:
    def __init__(self, cfg: WorkerConfig):
        self.cfg = cfg
        self.worker_id = cfg.worker_id
        self.version = worker_version()
        self.process = SwarmProcess(cfg)
        self.gateway = Gateway(host=cfg.public_host, port=cfg.public_port,
                               upstream=f"http://127.0.0.1:{cfg.internal_port}",
                               upstream_secret=lambda: self.process.internal_secret,
                               is_ready=lambda: self.process.ready, before_refresh=self.before_client_refresh,
                               ssl_context=cfg.server_ssl_context())
        self.legacy_token: str | None = None
        self.leases = Leases(cfg, self.gateway, self.process, ensure_ready=self.ensure_ready,
                             active_since=self._activity_since,
                             worker_id=self.worker_id, version=self.version)
        self.holds = Holds(cfg, self.process, busy=self.swarm_busy, healthy=self.healthy)
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
        if self.leases.current:
            await self.leases.end(self.leases.current, "worker_exit")
        await self.holds.release_all()
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
        lease, current = None, self.leases.current
        if current:
            lease = {"lease": current.number, "age_seconds": round(time.monotonic() - current.started, 1),
                     "idle_seconds": current.idle_seconds, "max_lease_seconds": current.max_lease_seconds}
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


def stop_on_signals() -> threading.Event:
    """An event SIGTERM and SIGINT set (the container stopping, Ctrl-C); installed before the boot so a
    stop during it still ends cleanly."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def run_until_stopped(rt: WorkerRuntime, stop: threading.Event) -> int:
    """Watch SwarmUI until `stop` is set (0) or SwarmUI has failed for good (1, logged)."""
    while not stop.wait(1.0):
        if rt.process.state == "failed":
            log.error("SwarmUI is gone: %s", rt.process.error)
            return 1
    return 0


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
