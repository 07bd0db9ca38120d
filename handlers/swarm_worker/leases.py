"""Leases (protocol 2): one client holds the worker through its own gateway token until the lease is
idle, unused past its startup grace, or at its longest (a running generation is never cut).

A lease owns the worker: at most one is held, and a lease job that finds one waits for it to end.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from handlers.swarm_worker.config import WorkerConfig
from handlers.swarm_worker.gateway import Gateway
from handlers.swarm_worker.swarm_files import wipe_dir
from handlers.swarm_worker.swarm_process import SwarmProcess, SwarmStartError

log = logging.getLogger("swarm.leases")

PROTOCOL = 2
# reasons a lease ends for which its generations are stopped (the others end an idle or finished lease)
INTERRUPTING = ("cancelled", "worker_exit")


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
    owner: str | None = None  # the lease job that asked for it (see `release_owned`)


class Leases:
    """The worker's lease: granting, watching and ending it. Runs on the runtime's event loop.

    `ensure_ready` waits for SwarmUI; `active_since(t)` tells whether SwarmUI generated (or is busy)
    since monotonic time `t`; `worker_id` and `version` go into the replies."""

    def __init__(self, cfg: WorkerConfig, gateway: Gateway, process: SwarmProcess, *,
                 ensure_ready: Callable[[], Awaitable[None]], active_since: Callable[[float], Awaitable[bool]],
                 worker_id: str, version: str):
        self.cfg = cfg
        self.gateway = gateway
        self.process = process
        self._ensure_ready = ensure_ready
        self._active_since = active_since
        self.worker_id = worker_id
        self.version = version
        self.current: Lease | None = None
        self.count = 0
        self._ended: asyncio.Event | None = None  # set when the current lease ends (waiting lease jobs)

    def _clamp(self, value: float | None, default: float) -> float:
        v = default if value is None else float(value)
        return max(self.cfg.lease_min_seconds, min(self.cfg.lease_cap_seconds, v))

    def limits(self, idle: float | None, grace: float | None, max_lease: float | None) -> dict[str, float]:
        return {
            "idle_seconds": self._clamp(idle, self.cfg.idle_seconds),
            "startup_grace_seconds": self._clamp(grace, self.cfg.startup_grace_seconds),
            "max_lease_seconds": self._clamp(max_lease, self.cfg.max_lease_seconds),
        }

    async def begin(self, idle: float | None, grace: float | None, max_lease: float | None,
                    owner: str | None = None) -> tuple[Lease | None, dict]:
        """Claim the worker for one lease and wait for SwarmUI; returns (lease, first output).

        A lease job that finds the worker leased waits for that lease to end instead of failing: it
        can only get here when the SDK took two leases in one batch, before the concurrency modifier
        dropped to 1 (see __main__.concurrency_modifier)."""
        if self.current is not None:
            log.warning("a lease job arrived while lease %d holds this worker: it waits for that lease to end",
                        self.current.number)
        while self.current is not None:
            if self._ended is None:
                self._ended = asyncio.Event()
            await self._ended.wait()
        limits = self.limits(idle, grace, max_lease)
        self.count += 1
        lease = Lease(number=self.count, token=secrets.token_urlsafe(48), owner=owner, **limits)
        self.current = lease
        # The per-worker legacy token belongs to no lease: it is refused (and its WebSockets closed)
        # until the lease ends. A fixed token from the environment stays valid (documented).
        await self.gateway.suspend("legacy")
        try:
            await self._ensure_ready()
        except asyncio.CancelledError:  # the lease job was cancelled while SwarmUI was starting
            await self.end(lease, "cancelled")
            raise
        except (SwarmStartError, OSError) as exc:
            await self.end(lease, "swarmui_failed")
            tail = exc.tail[-15:] if isinstance(exc, SwarmStartError) else []
            return None, {"released": True, "reason": "swarmui_failed", "success": False,
                          "error": f"engine_failed: SwarmUI did not start: {exc}", "log_tail": tail}
        self.gateway.allow(lease.token, "lease")
        lease.published = time.monotonic()
        log.info("lease %d started (idle %.0fs, grace %.0fs, max %.0fs)", lease.number, lease.idle_seconds,
                 lease.startup_grace_seconds, lease.max_lease_seconds)
        return lease, {"success": True, "public_url": self.cfg.public_base_url(), "token": lease.token,
                       "worker_id": self.worker_id, "lease": lease.number, "version": self.version,
                       "protocol": PROTOCOL, **limits}

    async def release_owned(self, owner: str, reason: str) -> None:
        """End the lease `owner` asked for, if it holds the worker. For a lease job cancelled while its
        grant was on the way: a grant that completed in that instant never reached the job (the answer
        of a cancelled cross-loop call is dropped), so the job cannot name the lease itself."""
        if self.current is not None and self.current.owner == owner:
            await self.end(self.current, reason)

    async def watch(self, lease: Lease) -> dict:
        """Hold the lease until idle, startup grace or max lifetime (never cutting a generation)."""
        reason = "cancelled"
        try:
            reason = await self._until_released(lease)
        finally:
            await self.end(lease, reason)
        held = round(time.monotonic() - lease.started, 2)
        return {"released": True, "reason": reason, "lease": lease.number, "held_seconds": held,
                "worker_id": self.worker_id}

    async def _until_released(self, lease: Lease) -> str:
        assert lease.published is not None
        checked = lease.published
        while True:
            now = time.monotonic()
            if lease.stop.is_set():
                return lease.stop_reason or "released"
            if self.process.state == "failed":
                return "swarmui_exited"
            if await self._active_since(checked):
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

    async def end(self, lease: Lease, reason: str) -> None:
        """Revoke the token, close its WebSockets, stop its generations, wipe SwarmUI's outputs.

        Only the sessions the lease generated with are interrupted: a `generate` job running beside
        the lease is left alone."""
        if self.current is not lease:
            return
        closed = await self.gateway.revoke(lease.token)
        self.gateway.resume("legacy")
        sessions = self.gateway.sessions.pop(lease.token)
        interrupt = reason in INTERRUPTING and self.process.ready
        if interrupt:
            for sid in sessions:
                await self.process.client.interrupt_session(sid)
        wiped = wipe_dir(self.cfg.swarm_output_dir)
        self.current = None
        if self._ended is not None:
            self._ended.set()
            self._ended = None
        log.info("lease %d released (%s): token revoked, %d WebSocket(s) closed, %d session(s) interrupted, "
                 "%d output entries wiped", lease.number, reason, closed, len(sessions) if interrupt else 0, wiped)
