"""Starts SwarmUI headless, waits until it can generate, watches it, restarts it once, stops it.

SwarmUI runs in its own process group (it starts ComfyUI and ComfyUI's helpers as children),
so stopping it stops them all, on shutdown or when the worker process exits.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import logging
import os
import secrets
import shlex
import signal
import time

from common import processes
from common.swarmui import SwarmUIClient, SwarmUIError
from handlers.swarm_worker.config import WorkerConfig
from handlers.swarm_worker.swarm_files import build_model_tree, write_swarm_config

log = logging.getLogger("swarm.process")

TAIL_LINES = 200
LINE_KEEP_CHARS = 4096  # of one log line, in the tail and error details (the log file has it all)


def child_env() -> dict[str, str]:
    """The worker's environment minus its credentials (RunPod job API key, upload keys, gateway token).

    Whoever holds a lease drives SwarmUI and ComfyUI, which can run code; they should not find the
    worker's secrets in those processes' environment. `SWARMUI_PASS_ENV` (comma-separated names)
    passes chosen ones on anyway, e.g. `HF_TOKEN,CIVITAI_API_KEY` for SwarmUI's model downloads.
    """
    return processes.child_env(os.environ.get("SWARMUI_PASS_ENV", "").split(","))


class SwarmStartError(RuntimeError):
    """SwarmUI did not come up (exited, or not ready within the startup timeout)."""

    def __init__(self, message: str, tail: list[str]):
        super().__init__(message)
        self.tail = tail


class SwarmProcess:
    """One SwarmUI child process, owned by the worker runtime's event loop."""

    def __init__(self, cfg: WorkerConfig):
        self.cfg = cfg
        self.internal_secret = secrets.token_urlsafe(32)
        self.client = SwarmUIClient(f"http://127.0.0.1:{cfg.internal_port}", token=self.internal_secret,
                                    http_timeout=cfg.http_timeout)
        self.state = "stopped"  # stopped | starting | ready | exited | failed
        self.restarts = 0
        self.last_exit: int | None = None
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self.error: str | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._startup: asyncio.Task | None = None
        self._monitor: asyncio.Task | None = None
        self._reader: asyncio.Task | None = None
        self._stopping = False
        self._last_refresh: float | None = None
        self._refresh_lock = asyncio.Lock()
        # the model tree changed since SwarmUI last scanned it (its start or a refresh)
        self.models_stale = False
        atexit.register(self._kill_group_now)

    # -- public ---------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.state == "ready" and self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def tail(self, n: int = 30) -> list[str]:
        return list(self._tail)[-n:]

    def start(self) -> asyncio.Task:
        """Start SwarmUI unless it is running or starting; returns the startup task."""
        if self._startup is None or (self._startup.done() and self.state in ("stopped", "exited")):
            self._startup = asyncio.create_task(self._start())
        return self._startup

    async def ensure_ready(self, timeout: float) -> None:
        """Start if needed and wait until SwarmUI is ready (through a restart after a crash);
        raises `SwarmStartError`."""
        deadline = time.monotonic() + timeout
        while not self.ready:
            left = deadline - time.monotonic()
            if self.state == "failed":
                raise SwarmStartError(self.error or "SwarmUI failed", self.tail())
            if self._stopping:
                raise SwarmStartError("SwarmUI is being stopped", self.tail())
            if left <= 0:
                raise SwarmStartError(f"SwarmUI is still starting after {timeout:.0f} s", self.tail())
            if self.state == "ready":  # it has just exited; the monitor is about to notice and restart it
                await asyncio.sleep(0.05)
                continue
            try:
                await asyncio.wait_for(asyncio.shield(self.start()), left)
            except asyncio.TimeoutError:
                continue

    async def wait_exit(self, timeout: float) -> int | None:
        """The exit code if the process ends within `timeout` seconds, else None."""
        proc = self._proc
        if proc is None:
            return self.last_exit
        try:
            return await asyncio.wait_for(asyncio.shield(proc.wait()), timeout)
        except asyncio.TimeoutError:
            return None

    async def stop(self) -> None:
        self._stopping = True
        for task in (self._startup, self._monitor):
            if task and not task.done():
                task.cancel()
        await self._terminate()
        await self.client.close()
        self.state = "stopped"

    async def _refresh_window(self) -> None:
        """Wait until SwarmUI would really rescan: it skips a `TriggerRefresh` within 10 s of its start
        or of the last refresh (mcmonkeyprojects/SwarmUI src/WebAPI/T2IAPI.cs:991, 1008); counted from
        when SwarmUI was found ready, which is after its start."""
        since = max((t for t in (self.ready_at, self._last_refresh) if t is not None), default=time.monotonic())
        wait = since + self.cfg.refresh_debounce_seconds + 0.25 - time.monotonic()
        if wait > 0:
            log.info("waiting %.1f s for SwarmUI's refresh debounce", wait)
            await asyncio.sleep(wait)

    async def refresh_models(self) -> dict:
        """`TriggerRefresh` that really rescans (after the debounce window); the rescan holds SwarmUI's
        refresh lock and may take minutes on a big volume."""
        async with self._refresh_lock:
            await self._refresh_window()
            self.models_stale = False
            try:
                return await self.client.trigger_refresh(timeout=self.cfg.refresh_timeout)
            except BaseException:
                self.models_stale = True
                raise
            finally:
                self._last_refresh = time.monotonic()

    async def before_forwarded_refresh(self) -> None:
        """A client's `TriggerRefresh` is about to reach SwarmUI: when the model tree changed, hold it
        until SwarmUI would not skip it."""
        if not self.models_stale:
            return
        async with self._refresh_lock:
            await self._refresh_window()
            self.models_stale = False
            self._last_refresh = time.monotonic()

    def describe(self) -> dict:
        return {
            "state": self.state,
            "pid": self.pid,
            "restarts": self.restarts,
            "last_exit_code": self.last_exit,
            "uptime_seconds": round(time.monotonic() - self.ready_at, 1) if self.ready and self.ready_at else None,
            "error": self.error,
        }

    # -- internals ------------------------------------------------------------------------------------

    async def _start(self) -> None:
        try:
            await self._launch_and_wait()
        except SwarmStartError as exc:
            self.error = str(exc)
            log.error("SwarmUI did not start: %s\n%s", exc, "\n".join(exc.tail[-20:]))
            await self._terminate()
            if self.restarts < self.cfg.max_restarts and not self._stopping:
                self.restarts += 1
                log.warning("restarting SwarmUI (restart %d of %d)", self.restarts, self.cfg.max_restarts)
                try:
                    await self._launch_and_wait()
                    return
                except SwarmStartError as exc2:
                    self.error = str(exc2)
                    log.error("SwarmUI did not start again: %s\n%s", exc2, "\n".join(exc2.tail[-20:]))
                    await self._terminate()
            self.state = "failed"

    async def _launch_and_wait(self) -> None:
        cfg = self.cfg
        self.state = "starting"
        self.error = None
        await asyncio.to_thread(build_model_tree, cfg.model_roots, cfg.model_tree)
        self.models_stale = False  # SwarmUI scans the tree as it starts
        cfg.swarm_output_dir.mkdir(parents=True, exist_ok=True)
        settings, backends = write_swarm_config(
            cfg.data_dir, model_root=cfg.model_tree, output_dir=cfg.swarm_output_dir, port=cfg.internal_port,
            internal_auth=f"Bearer {self.internal_secret}", comfy_extra_args=cfg.comfy_extra_args)
        argv = shlex.split(cfg.launch_cmd.format(
            port=cfg.internal_port, data_dir=cfg.data_dir, settings_file=settings, backends_file=backends,
            swarmui_dir=cfg.swarmui_dir))
        cwd = cfg.swarmui_dir if cfg.swarmui_dir.is_dir() else None
        log.info("starting SwarmUI: %s (cwd %s)", " ".join(argv), cwd)
        env, spawn_as = child_env(), {}
        if cfg.run_as is not None:  # SwarmUI and ComfyUI under a uid of their own (run_as.py)
            env.update(await asyncio.to_thread(cfg.prepare_run_as))
            spawn_as = cfg.run_as.spawn_kwargs()
        self._tail.clear()
        self.started_at = time.monotonic()
        try:
            self._proc = await processes.spawn(argv, cwd=cwd, env=env, **spawn_as)
        except OSError as exc:
            raise SwarmStartError(f"cannot run SwarmUI launch command {argv[0]!r}: {exc}", []) from None
        self._reader = asyncio.create_task(self._read_output(self._proc))
        await self._wait_ready(self._proc, self.started_at + cfg.startup_timeout)
        self.state = "ready"
        self.ready_at = time.monotonic()
        log.info("SwarmUI ready after %.1f s (pid %s)", self.ready_at - self.started_at, self._proc.pid)
        self._monitor = asyncio.create_task(self._watch(self._proc))

    async def _read_output(self, proc: asyncio.subprocess.Process) -> None:
        """Copy SwarmUI's output to the log file and keep the last lines (the first LINE_KEEP_CHARS of each)."""
        assert proc.stdout is not None
        self.cfg.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.cfg.log_file.open("ab") as fh:
            await processes.pump(proc.stdout, processes.LineSplitter(self._keep_line, keep=LINE_KEEP_CHARS), raw=fh)

    def _keep_line(self, text: str, cut: bool) -> None:
        self._tail.append(text + " …(line cut)" if cut else text)

    async def _wait_ready(self, proc: asyncio.subprocess.Process, deadline: float) -> None:
        """Ready = the API answers and a backend reports `running`."""
        last = "no answer yet"
        while True:
            if proc.returncode is not None:
                await self._drain_reader()
                self.last_exit = proc.returncode
                raise SwarmStartError(f"SwarmUI exited with code {proc.returncode} while starting", self.tail())
            if time.monotonic() >= deadline:
                raise SwarmStartError(f"SwarmUI not ready within {self.cfg.startup_timeout:.0f} s ({last})",
                                      self.tail())
            try:
                backends = await self.client.list_backends()
                states = [b.get("status") for b in backends.values() if isinstance(b, dict)]
                if "running" in states:
                    return
                last = f"backends: {', '.join(map(str, states)) or 'none'}"
                if states and all(s in ("errored", "disabled") for s in states):
                    raise SwarmStartError(f"SwarmUI backend failed to start ({last})", self.tail())
            except SwarmUIError as exc:
                last = str(exc)
            await asyncio.sleep(0.25)

    async def _drain_reader(self) -> None:
        if self._reader:
            try:
                await asyncio.wait_for(self._reader, 2)
            except (asyncio.TimeoutError, Exception):  # the tail is best effort
                pass

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        await self._drain_reader()
        if self._stopping or proc is not self._proc:
            return
        self.last_exit = code
        self.state = "exited"
        self.error = f"SwarmUI exited unexpectedly with code {code}"
        log.error("%s; last log lines:\n%s", self.error, "\n".join(self.tail(20)))
        # ComfyUI children outlive a crashed SwarmUI
        processes.signal_group(proc.pid, signal.SIGKILL)
        if self.restarts < self.cfg.max_restarts:
            self.restarts += 1
            log.warning("restarting SwarmUI (restart %d of %d)", self.restarts, self.cfg.max_restarts)
            self._startup = asyncio.create_task(self._restart_after_crash())
        else:
            self.state = "failed"

    async def _restart_after_crash(self) -> None:
        try:
            await self._launch_and_wait()
        except SwarmStartError as exc:
            self.error = f"SwarmUI restart failed: {exc}"
            log.error("%s\n%s", self.error, "\n".join(exc.tail[-20:]))
            await self._terminate()
            self.state = "failed"

    async def _terminate(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            log.info("stopping SwarmUI (SIGTERM, SIGKILL after %.0f s)", self.cfg.stop_timeout)
        self.last_exit = await processes.stop(proc, self.cfg.stop_timeout)
        await self._drain_reader()

    def _kill_group_now(self) -> None:
        """atexit: the worker is exiting, take SwarmUI and its children with it."""
        self._stopping = True
        if self._proc is not None:
            processes.kill_group(self._proc.pid, 3)
