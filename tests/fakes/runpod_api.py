"""A local stand-in for RunPod's client-facing serverless endpoint API
(https://docs.runpod.io/serverless/endpoints/operations, https://docs.runpod.io/serverless/endpoints/send-requests).

Routes, under `/v2/<endpoint_id>/`:
- `POST run` `{"input": ..., "webhook"?, "policy"?}` -> `{"id", "status": "IN_QUEUE"}`; a body
  without `input` -> 400.
- `POST runsync[?wait=ms]` -> the finished job, or `{"id", "status": "IN_QUEUE"|"IN_PROGRESS"}`
  when it is still running after `wait` (clamped to 1000-300000 ms, default `runsync_wait_ms`).
- `GET status/<id>` -> `{"id", "status", "delayTime", "executionTime", "output"|"error"}`; while
  IN_PROGRESS, `output` is the latest progress update. Unknown id -> 404.
- `GET stream/<id>` -> `{"status", "stream": [{"output": item}, ...]}` with the items not fetched yet.
- `POST cancel/<id>` -> `{"id", "status": "CANCELLED"}` (a running job's worker is told to stop).
- `GET health` -> `{"jobs": {completed, failed, inProgress, inQueue, retried}, "workers": {...}}`.
- `POST purge-queue` -> `{"removed": n, "status": "completed"}` (queued jobs only).

Jobs run on `workers` threads per endpoint through a Python handler `fn(job_input, ctx)`;
`ctx.progress(data)` mimics `progress_update`, `ctx.stream(item)` a generator's yield,
`ctx.cancelled` is set on cancel. What the handler returns becomes `output`; a returned
`{"error": "..."}` fails the job with that string; a raised exception fails it with the
JSON-encoded string the SDK sends (`error_type`, `error_message`, `error_traceback`, ...).
As in the SDK, `error` and `refresh_worker` are popped from a dict result and an empty output dropped.

Auth: `Authorization: Bearer <key>` (or the bare key); anything else -> 401. Unknown endpoint
-> 404. `inject(status, count, retry_after)` makes the next requests fail (429 with
Retry-After, 5xx) to exercise client retries. `requests` records (method, path, auth_ok).
"""

from __future__ import annotations

import json
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.threaded_http import LocalService, reply_json

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")


class JobContext:
    def __init__(self, job: FakeJob, server: FakeRunPodAPI):
        self.job = job
        self._server = server
        self.cancelled = threading.Event()

    @property
    def id(self) -> str:
        return self.job.id

    def progress(self, data: Any) -> None:
        with self._server.lock:
            if self.job.status == "IN_PROGRESS":
                self.job.progress = data

    def stream(self, item: Any) -> None:
        with self._server.lock:
            self.job.stream.append(item)

    def sleep(self, seconds: float) -> bool:
        """Sleep unless cancelled; True when cancelled."""
        return self.cancelled.wait(seconds)


@dataclass
class FakeJob:
    id: str
    endpoint: str
    input: Any
    status: str = "IN_QUEUE"
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    progress: Any = None
    stream: list = field(default_factory=list)
    streamed: int = 0
    output: Any = None
    error: Any = None
    ctx: JobContext | None = None

    def body(self) -> dict:
        out: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.started is not None:
            out["delayTime"] = int((self.started - self.created) * 1000)
        if self.finished is not None and self.started is not None:
            out["executionTime"] = int((self.finished - self.started) * 1000)
        if self.status == "IN_PROGRESS" and self.progress is not None:
            out["output"] = self.progress
        elif self.status == "COMPLETED" and self.output is not None:
            out["output"] = self.output
        elif self.status == "FAILED":
            out["error"] = self.error
        return out


Handler = Callable[[Any, JobContext], Any]


class FakeRunPodAPI(LocalService):
    """Use as a context manager; `url` is the base to put in RUNPOD_ENDPOINT_BASE_URL (ends in /v2)."""

    def __init__(self, *, api_key: str = "rp-fake-key-0123456789", workers: int = 1,
                 runsync_wait_ms: int = 5000, queue_delay: float = 0.0):
        self.api_key = api_key
        self.workers = workers
        self.runsync_wait_ms = runsync_wait_ms
        self.queue_delay = queue_delay
        self.handlers: dict[str, Handler] = {}
        self.jobs: dict[str, FakeJob] = {}
        self.queues: dict[str, deque[str]] = {}
        self.requests: list[tuple[str, str, bool]] = []
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self._faults: deque[tuple[int, float | None]] = deque()
        self._stop = False
        self._threads: list[threading.Thread] = []

    # -- setup -----------------------------------------------------------------------------------------

    def add_endpoint(self, endpoint_id: str, handler: Handler, *, workers: int | None = None) -> None:
        with self.lock:
            self.handlers[endpoint_id] = handler
            self.queues[endpoint_id] = deque()
        for _ in range(workers or self.workers):
            t = threading.Thread(target=self._worker, args=(endpoint_id,), daemon=True)
            t.start()
            self._threads.append(t)

    def inject(self, status: int, count: int = 1, retry_after: float | None = None) -> None:
        """The next `count` authorized requests get `status` (with Retry-After when given);
        `status` 0 closes the connection without any answer, as a network outage looks to a client."""
        with self.lock:
            self._faults.extend([(status, retry_after)] * count)

    @property
    def url(self) -> str:
        return f"{self.origin}/v2"

    def close(self) -> None:
        with self.cond:
            self._stop = True
            self.cond.notify_all()
            for job in self.jobs.values():
                if job.ctx is not None:
                    job.ctx.cancelled.set()
        super().close()

    # -- the queue -------------------------------------------------------------------------------------

    def _worker(self, endpoint_id: str) -> None:
        while True:
            with self.cond:
                while not self._stop and not self.queues[endpoint_id]:
                    self.cond.wait(0.5)
                if self._stop:
                    return
                job = self.jobs[self.queues[endpoint_id].popleft()]
            if self.queue_delay:
                time.sleep(self.queue_delay)
            with self.cond:
                if job.status != "IN_QUEUE":  # cancelled while waiting
                    continue
                job.status, job.started = "IN_PROGRESS", time.monotonic()
                job.ctx = JobContext(job, self)
            self._execute(job)

    def _execute(self, job: FakeJob) -> None:
        assert job.ctx is not None
        try:
            result = self.handlers[job.endpoint](job.input, job.ctx)
            status, output, error = "COMPLETED", result, None
            if isinstance(result, dict):
                # As the SDK does: `error` and `refresh_worker` are popped; a truthy error fails the job.
                output = {k: v for k, v in result.items() if k not in ("error", "refresh_worker")} or None
                if result.get("error"):
                    status, output, error = "FAILED", None, result["error"]
        except Exception as exc:
            status, output = "FAILED", None
            error = json.dumps({"error_type": str(type(exc)), "error_message": str(exc),
                                "error_traceback": traceback.format_exc(), "hostname": "fake-worker",
                                "worker_id": "fake-worker", "runpod_version": "1.12.0"})
        with self.cond:
            if job.status == "IN_PROGRESS":
                job.status, job.output, job.error = status, output, error
            job.finished = time.monotonic()
            self.cond.notify_all()

    def _submit(self, endpoint_id: str, body: dict) -> FakeJob:
        job = FakeJob(id=f"{uuid.uuid4()}-u1", endpoint=endpoint_id, input=body["input"])
        with self.cond:
            self.jobs[job.id] = job
            self.queues[endpoint_id].append(job.id)
            self.cond.notify_all()
        return job

    # -- HTTP ------------------------------------------------------------------------------------------

    def _dispatch(self, h: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(h.path)
        segments = [s for s in parts.path.split("/") if s]
        query = parse_qs(parts.query)
        auth = h.headers.get("Authorization", "")
        authorized = auth in (f"Bearer {self.api_key}", self.api_key)
        self.requests.append((method, parts.path, authorized))
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        if not authorized:
            return self._send(h, 401, {"error": "Unauthorized request, please check your API key."})
        with self.lock:
            fault = self._faults.popleft() if self._faults else None
        if fault is not None:
            status, retry_after = fault
            if status == 0:
                h.close_connection = True
                return None
            headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
            return self._send(h, status, {"error": "Too Many Requests" if status == 429 else "upstream error"},
                              headers)
        if len(segments) < 3 or segments[0] != "v2":
            return self._send(h, 404, {"error": "not found"})
        endpoint_id, route, rest = segments[1], segments[2], segments[3:]
        if endpoint_id not in self.handlers:
            return self._send(h, 404, {"error": f"endpoint {endpoint_id} not found"})
        expected = {"run": "POST", "runsync": "POST", "status": "GET", "stream": "GET", "cancel": "POST",
                    "health": "GET", "purge-queue": "POST"}
        if route not in expected:
            return self._send(h, 404, {"error": f"unknown route {route}"})
        if method != expected[route]:
            return self._send(h, 405, {"error": "method not allowed"})
        if route in ("run", "runsync"):
            try:
                body = json.loads(raw or b"null")
            except ValueError:
                body = None
            if not isinstance(body, dict) or "input" not in body:
                return self._send(h, 400, {"error": "request body must be a JSON object with an 'input' key"})
            job = self._submit(endpoint_id, body)
            if route == "run":
                return self._send(h, 200, {"id": job.id, "status": "IN_QUEUE"})
            wait_ms = int(query.get("wait", [self.runsync_wait_ms])[0])
            deadline = time.monotonic() + min(300000, max(1000, wait_ms)) / 1000
            with self.cond:
                while job.status not in TERMINAL and time.monotonic() < deadline:
                    self.cond.wait(deadline - time.monotonic())
                body = job.body()
            return self._send(h, 200, body)
        if route == "health":
            with self.lock:
                jobs = [j for j in self.jobs.values() if j.endpoint == endpoint_id]
                running = sum(j.status == "IN_PROGRESS" for j in jobs)
                counts = {"completed": sum(j.status == "COMPLETED" for j in jobs),
                          "failed": sum(j.status == "FAILED" for j in jobs), "inProgress": running,
                          "inQueue": sum(j.status == "IN_QUEUE" for j in jobs), "retried": 0}
            return self._send(h, 200, {"jobs": counts, "workers": {"idle": self.workers - running,
                                                                    "initializing": 0, "ready": self.workers - running,
                                                                    "running": running, "throttled": 0,
                                                                    "unhealthy": 0}})
        if route == "purge-queue":
            with self.cond:
                removed = [jid for jid in self.queues[endpoint_id] if self.jobs[jid].status == "IN_QUEUE"]
                for jid in removed:
                    self.jobs[jid].status = "CANCELLED"
                self.queues[endpoint_id].clear()
                self.cond.notify_all()
            return self._send(h, 200, {"removed": len(removed), "status": "completed"})
        if not rest:
            return self._send(h, 400, {"error": "missing job id"})
        job = self.jobs.get(rest[0])
        if job is None or job.endpoint != endpoint_id:
            return self._send(h, 404, {"error": "request does not exist"})
        if route == "status":
            with self.lock:
                return self._send(h, 200, job.body())
        if route == "stream":
            deadline = time.monotonic() + 0.1  # a short long-poll, as RunPod holds the request
            with self.cond:
                while job.streamed >= len(job.stream) and job.status not in TERMINAL and time.monotonic() < deadline:
                    self.cond.wait(0.05)
                items = job.stream[job.streamed:]
                job.streamed = len(job.stream)
                return self._send(h, 200, {"status": job.status, "stream": [{"output": i} for i in items]})
        # cancel
        with self.cond:
            if job.status not in TERMINAL:
                job.status, job.finished = "CANCELLED", time.monotonic()
                if job.ctx is not None:
                    job.ctx.cancelled.set()
                self.cond.notify_all()
            return self._send(h, 200, {"id": job.id, "status": job.status})

    _send = staticmethod(reply_json)
