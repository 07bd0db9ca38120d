"""Legacy holds: the v2.0 extension keeps a worker alive with `wakeup` and `keepalive` jobs that last
`duration` seconds, and ends them all with `shutdown`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from handlers.swarm_worker.config import WorkerConfig
from handlers.swarm_worker.swarm_process import SwarmProcess


class Holds:
    """The holds running now. Runs on the runtime's event loop.

    `busy()` tells whether SwarmUI is generating (a hold does not end under a generation);
    `healthy()` is the check a hold counts every `interval`."""

    def __init__(self, cfg: WorkerConfig, process: SwarmProcess, *, busy: Callable[[], Awaitable[bool]],
                 healthy: Callable[[], Awaitable[bool]]):
        self.cfg = cfg
        self.process = process
        self._busy = busy
        self._healthy = healthy
        self._running: set[asyncio.Event] = set()

    def __len__(self) -> int:
        return len(self._running)

    async def hold(self, duration: float, interval: float, *, until_ready: bool = False) -> dict:
        """Keep this job (and so the worker) alive for `duration` s, or until `shutdown`; a generation
        still running at the end extends the hold (up to the hold cap). With `until_ready` the hold
        also ends as soon as SwarmUI is ready (or has failed for good)."""
        duration = max(0.0, min(float(duration), self.cfg.hold_cap_seconds))
        interval = max(0.05, float(interval))
        event = asyncio.Event()
        self._running.add(event)
        start = time.monotonic()
        checks, healthy, reason = 0, self.process.ready, "completed"
        try:
            while True:
                if until_ready and self.process.state in ("ready", "failed"):
                    reason = "ready" if self.process.ready else "swarmui_failed"
                    break
                elapsed = time.monotonic() - start
                if elapsed >= duration:
                    if elapsed < self.cfg.hold_cap_seconds and await self._busy():
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
                        healthy = await self._healthy()
        finally:
            self._running.discard(event)
        return {"reason": reason, "held_seconds": round(time.monotonic() - start, 2), "checks": checks,
                "healthy": self.process.ready if until_ready else healthy}

    async def release_all(self) -> int:
        """`shutdown`: end every hold. The legacy token stays valid: with several generations in flight
        (the extension's MaxConcurrent) one request's shutdown must not cut the others off, and whoever
        can send jobs can ask `ready` for the token anyway."""
        running = list(self._running)
        for ev in running:
            ev.set()
        return len(running)
