"""A local stand-in for RunPod's serverless job API, for driving the runpod SDK's real worker loop.

The SDK (1.12) reads its webhook URLs from the environment at import time, so a handler
is run as a subprocess (`launch_handler`) with `server.env()` pointing it here. What the
server speaks is what runpod-python 1.12.0 sends (runpod/runpod-python, tag 1.12.0):
`runpod/serverless/modules/rp_job.py:23` (job-take URL from RUNPOD_WEBHOOK_GET_JOB),
`:116-122` (job-take-batch, `job_in_progress`), `:145` (204: no job), `:37-39` (job-stop);
`rp_http.py:17,22` (job-done / job-stream URLs), `:38-44` (JSON sent as form-urlencoded),
`:63` (`isStream`); `rp_ping.py:29` (ping); `runpod/http_client.py:20-30` (the raw key in
`Authorization`).

- `GET  /v2/<ep>/job-take/<worker>?...&job_in_progress=0|1` -> a queued job as JSON
  `{"id", "input", ...}`, or 204 after a short long-poll; `/job-take-batch/` -> a JSON list.
- `POST /v2/<ep>/job-done/<worker>?id=<job>&isStream=true|false` with a JSON body sent as
  `application/x-www-form-urlencoded`: `{"status": "IN_PROGRESS", "output": ...}` is a
  progress update, anything else is the final result (`output` / `error` / `stopPod`).
- `POST /v2/<ep>/job-stream/<worker>?id=<job>&isStream=true` -> one `{"output": item}` per yield.
- `GET  /v2/<ep>/job-stop/<worker>?...` -> `{"jobsToStop": [...]}` or 204 (long-poll).
- `GET  /v2/<ep>/ping/<worker>?...` -> 200 (heartbeat, counted).

Every request must carry the API key in `Authorization` (raw, as the SDK sends it); others get 401.
`status(job_id)` answers like the client-facing `/status/<id>` (`IN_QUEUE`, `IN_PROGRESS`,
`COMPLETED`, `FAILED`, `CANCELLED`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.threaded_http import LocalService

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class JobRecord:
    """Everything the worker told the server about one job."""

    id: str
    input: Any
    status: str = "IN_QUEUE"
    worker_id: str | None = None
    progress: list[Any] = field(default_factory=list)   # outputs of IN_PROGRESS posts, in order
    stream: list[Any] = field(default_factory=list)     # outputs of job-stream posts, in order
    result: dict | None = None                          # the final job-done body
    stop_pod: bool = False
    taken_at: float | None = None
    done_at: float | None = None
    extra: dict = field(default_factory=dict)           # platform keys added to the job dict (webhook, ...)

    @property
    def output(self) -> Any:
        return (self.result or {}).get("output")

    @property
    def error(self) -> Any:
        return (self.result or {}).get("error")


class RunPodJobServer(LocalService):
    """Job queue + recorder on 127.0.0.1. Use as a context manager or call start()/close()."""

    def __init__(self, *, api_key: str = "test-runpod-key", endpoint_id: str = "ep-test",
                 poll_wait: float = 0.5) -> None:
        self.api_key = api_key
        self.endpoint_id = endpoint_id
        self.poll_wait = poll_wait
        self.jobs: dict[str, JobRecord] = {}
        self.pings = 0
        self.unauthorized: list[str] = []   # paths of requests with a wrong/missing key
        self.requests: list[tuple[str, str]] = []  # (method, path with query) in arrival order
        self._queue: deque[str] = deque()
        self._stops: deque[str] = deque()
        self._cond = threading.Condition()

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"{self.origin}/v2/{self.endpoint_id}"

    def env(self, worker_id: str = "worker-1") -> dict[str, str]:
        """The environment RunPod gives a serverless worker, pointed at this server."""
        base = self.base_url
        return {
            "RUNPOD_WEBHOOK_GET_JOB": f"{base}/job-take/$ID?gpu=test",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{base}/job-done/$RUNPOD_POD_ID?id=$ID",
            "RUNPOD_WEBHOOK_POST_STREAM": f"{base}/job-stream/$RUNPOD_POD_ID?id=$ID",
            "RUNPOD_WEBHOOK_PING": f"{base}/ping/$RUNPOD_POD_ID?gpu=test",
            "RUNPOD_PING_INTERVAL": "1000",
            "RUNPOD_POD_ID": worker_id,
            "RUNPOD_AI_API_KEY": self.api_key,
            "RUNPOD_ENDPOINT_ID": self.endpoint_id,
            "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
            "RUNPOD_SKIP_GPU_CHECK": "true",
        }

    # -- test-side API ------------------------------------------------------------------
    def submit(self, job_input: Any, *, job_id: str | None = None, **extra: Any) -> str:
        """Queue a job (`extra` keys such as `webhook` go into the job dict as the platform adds them)."""
        job_id = job_id or f"job-{uuid.uuid4().hex[:12]}"
        with self._cond:
            rec = JobRecord(id=job_id, input=job_input, extra=extra)
            self.jobs[job_id] = rec
            self._queue.append(job_id)
            self._cond.notify_all()
        return job_id

    def cancel(self, job_id: str) -> None:
        """Cancel a job: dropped if still queued, else announced on the worker's stop channel."""
        with self._cond:
            rec = self.jobs[job_id]
            if rec.status == "IN_QUEUE":
                self._queue.remove(job_id)
                rec.status = "CANCELLED"
            elif rec.status == "IN_PROGRESS":
                rec.status = "CANCELLED"
                self._stops.append(job_id)
            self._cond.notify_all()

    def status(self, job_id: str) -> dict:
        """What a client's `GET /status/<id>` would show."""
        with self._cond:
            rec = self.jobs[job_id]
            out: dict[str, Any] = {"id": rec.id, "status": rec.status}
            if rec.status == "IN_PROGRESS" and rec.progress:
                out["output"] = rec.progress[-1]
            elif rec.result is not None:
                if "error" in rec.result:
                    out["error"] = rec.result["error"]
                elif "output" in rec.result:
                    out["output"] = rec.result["output"]
            return out

    def wait(self, job_id: str, timeout: float = 60.0, *, proc: HandlerProcess | None = None) -> JobRecord:
        """Block until the job has a final result; fails early if the worker process died."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.jobs[job_id].result is None:
                if proc is not None and proc.poll() is not None:
                    raise AssertionError(f"worker exited with {proc.returncode}:\n{proc.log_tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = f"\n{proc.log_tail()}" if proc else ""
                    raise TimeoutError(f"job {job_id} has no result after {timeout}s "
                                       f"(status {self.jobs[job_id].status}){tail}")
                self._cond.wait(min(left, 0.2))
            return self.jobs[job_id]

    # -- HTTP side ----------------------------------------------------------------------
    def _dispatch(self, h: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(h.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        segs = [s for s in parts.path.split("/") if s]
        body = b""
        if method == "POST":
            body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        with self._cond:
            self.requests.append((method, h.path))
        if h.headers.get("Authorization") != self.api_key:
            with self._cond:
                self.unauthorized.append(parts.path)
            return self._reply(h, 401, {"error": "unauthorized"})
        if len(segs) < 3 or segs[0] != "v2" or segs[1] != self.endpoint_id:
            return self._reply(h, 404, {"error": "not found"})
        route, worker = segs[2], (segs[3] if len(segs) > 3 else None)
        if method == "GET" and route in ("job-take", "job-take-batch"):
            return self._take(h, worker, batch=route == "job-take-batch", size=int(query.get("batch_size", 1)))
        if method == "GET" and route == "job-stop":
            return self._stop_poll(h)
        if method == "GET" and route == "ping":
            with self._cond:
                self.pings += 1
            return self._reply(h, 200, {})
        if method == "POST" and route in ("job-done", "job-stream"):
            return self._record(h, route, query, body)
        return self._reply(h, 404, {"error": "not found"})

    def _take(self, h: BaseHTTPRequestHandler, worker: str | None, *, batch: bool, size: int) -> None:
        deadline = time.monotonic() + self.poll_wait
        with self._cond:
            while not self._queue and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
            taken = []
            while self._queue and len(taken) < (size if batch else 1):
                rec = self.jobs[self._queue.popleft()]
                rec.status, rec.worker_id, rec.taken_at = "IN_PROGRESS", worker, time.time()
                taken.append({"id": rec.id, "input": rec.input, **rec.extra})
        if not taken:
            return self._reply(h, 204, None)
        return self._reply(h, 200, taken if batch else taken[0])

    def _stop_poll(self, h: BaseHTTPRequestHandler) -> None:
        deadline = time.monotonic() + self.poll_wait
        with self._cond:
            while not self._stops and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
            ids = list(self._stops)
            self._stops.clear()
        if not ids:
            return self._reply(h, 204, None)
        return self._reply(h, 200, {"jobsToStop": ids})

    def _record(self, h: BaseHTTPRequestHandler, route: str, query: dict, body: bytes) -> None:
        try:
            data = json.loads(body or b"{}")  # JSON although the SDK labels it form-encoded
        except ValueError:
            return self._reply(h, 400, {"error": "body is not JSON"})
        job_id = query.get("id")
        with self._cond:
            rec = self.jobs.get(job_id or "")
            if rec is None:
                return self._reply(h, 404, {"error": f"unknown job {job_id}"})
            if route == "job-stream":
                rec.stream.append(data.get("output"))
            elif data.get("status") == "IN_PROGRESS":
                if rec.result is None:
                    rec.progress.append(data.get("output"))
            else:
                rec.result = data
                rec.stop_pod = bool(data.get("stopPod"))
                rec.done_at = time.time()
                if rec.status != "CANCELLED":
                    rec.status = "FAILED" if "error" in data else "COMPLETED"
            self._cond.notify_all()
        return self._reply(h, 200, {})

    @staticmethod
    def _reply(h: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
        raw = b"" if payload is None else json.dumps(payload).encode()
        h.send_response(status)
        if payload is not None:
            h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(raw)))
        h.end_headers()
        if raw:
            h.wfile.write(raw)


class HandlerProcess:
    """A `python -m handlers.<pkg>` worker subprocess; output goes to a log file (no pipe to fill)."""

    def __init__(self, popen: subprocess.Popen, log_path: Path) -> None:
        self.popen = popen
        self.log_path = log_path

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def poll(self) -> int | None:
        return self.popen.poll()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 4000) -> str:
        return self.log()[-chars:]

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (the SDK drains in-flight jobs), then SIGKILL if it does not exit in time."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        return self.popen.returncode

    def __enter__(self) -> HandlerProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def launch_handler(package: str, server: RunPodJobServer, *, log_path: Path, env: dict[str, str] | None = None,
                   worker_id: str = "worker-1", args: list[str] | None = None,
                   cwd: Path | None = None, module: str | None = None) -> HandlerProcess:
    """Start `python -m handlers.<package>` under the real RunPod worker loop, talking to `server`.

    `module` replaces `handlers.<package>` (e.g. a test's own handler module on `PYTHONPATH`).
    """
    module = module or f"handlers.{package}"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_WEBHOOK_")}
    full_env.update(server.env(worker_id))
    full_env["PYTHONUNBUFFERED"] = "1"
    full_env.update(env or {})
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [full_env.get("PYTHONPATH"), str(REPO_ROOT)]))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = open(log_path, "wb")  # noqa: SIM115 - handed to the child, closed with it
    try:
        popen = subprocess.Popen(
            [sys.executable, "-m", module, *(args or [])],
            cwd=str(cwd or REPO_ROOT), env=full_env, stdout=log_file, stderr=subprocess.STDOUT,
        )
    finally:
        log_file.close()
    return HandlerProcess(popen, log_path)
