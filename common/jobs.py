"""The job contract shared by every RunPod handler (the result and failure shapes are in each
image's docs page, "Request and response reference"; RunPod's side:
https://docs.runpod.io/serverless/workers/handler-functions).

- `JobError(code, message, details)` is the one way a job fails on purpose.
- `parse_input()` turns pydantic validation errors into one line per bad field.
- `error_result()` is the dict RunPod turns into a FAILED job with a readable `error`.
- `Progress` sends rate-limited `progress_update`s only when running under RunPod.
- `Timings` measures stages; `finish()` adds timings and the worker version to a result.
- `run_job()` / `run_job_async()` wrap a handler body so all of the above is applied once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from common.redaction import (
    MAX_ECHO_CHARS,
    current_scope,
    is_sensitive_key,
    redact,
    redact_text,
    register_secret,
    secret_scope,
    use_scope,
)

log = logging.getLogger("jobs")

ERROR_CODES = (
    "invalid_input",
    "download_failed",
    "unsafe_archive",
    "engine_failed",
    "upload_failed",
    "timeout",
    "cancelled",
    "internal",
)

# Result fields that exist to hand a link to the caller; they are never masked.
PUBLIC_RESULT_FIELDS = frozenset({"download_url", "safetensors_url", "repo_url", "public_url", "url", "urls"})

# An error result echoes at most this many detail lines (each cut to MAX_ECHO_CHARS / 4 characters).
MAX_DETAILS = 50

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


class JobError(Exception):
    """A job failure with a contract error code and a message fit for the caller."""

    def __init__(self, code: str, message: str, details: list[str] | None = None):
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = list(details or [])


def _field_path(loc: tuple) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "input"


def validation_details(exc: ValidationError) -> list[str]:
    """One `field.path: reason` line per error, without echoing the rejected values."""
    lines = []
    for err in exc.errors(include_url=False, include_input=False):
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        elif msg.startswith("Assertion failed, "):
            msg = msg[len("Assertion failed, "):]
        lines.append(f"{_field_path(err['loc'])}: {msg}")
    return lines


def invalid_input(exc: ValidationError) -> JobError:
    details = validation_details(exc)
    return JobError("invalid_input", "; ".join(details), details)


def parse_input(model: type[M], raw: Any, context: dict | None = None) -> M:
    """Validate job input against a pydantic model (`context`: pydantic's validation context),
    raising `JobError("invalid_input")`."""
    if not isinstance(raw, dict):
        raise JobError("invalid_input", f"input: expected a JSON object, got {type(raw).__name__}")
    try:
        return model.model_validate(raw, context=context)
    except ValidationError as exc:
        raise invalid_input(exc) from None


def error_result(exc: BaseException) -> dict:
    """The failure result of the contract. Unknown exceptions become `internal` (traceback to the log only)."""
    if isinstance(exc, JobError):
        code, message, details = exc.code, exc.message, exc.details
    elif isinstance(exc, ValidationError):
        err = invalid_input(exc)
        code, message, details = err.code, err.message, err.details
    elif isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        code, message, details = "timeout", str(exc) or "the job ran past its time limit", []
    elif isinstance(exc, asyncio.CancelledError):
        code, message, details = "cancelled", "the job was cancelled", []
    else:
        code, message, details = "internal", f"unexpected {type(exc).__name__}: {exc}", []
    shown = [redact_text(str(d), limit=MAX_ECHO_CHARS // 4) for d in details[:MAX_DETAILS]]
    if len(details) > MAX_DETAILS:
        shown.append(f"... and {len(details) - MAX_DETAILS} more")
    return {
        "error": redact_text(f"{code}: {message}", limit=MAX_ECHO_CHARS),
        "error_code": code,
        "details": shown,
    }


def worker_version() -> str:
    env = os.environ.get("WORKER_VERSION")
    if env:
        return env
    try:
        from importlib.metadata import version

        return version("gpu-worker-images")
    except Exception:
        return "0+unknown"


def running_on_runpod() -> bool:
    """True inside RunPod's real worker loop (where progress updates have somewhere to go)."""
    return bool(os.environ.get("RUNPOD_WEBHOOK_POST_OUTPUT") and os.environ.get("RUNPOD_WEBHOOK_GET_JOB"))


class Timings:
    """Seconds per named stage, in the order the stages first ran."""

    def __init__(self) -> None:
        self._t0 = time.perf_counter()
        self._stages: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self._stages[name] = self._stages.get(name, 0.0) + seconds

    def as_dict(self) -> dict[str, float]:
        out = {k: round(v, 3) for k, v in self._stages.items()}
        out["total"] = round(time.perf_counter() - self._t0, 3)
        return out


class Progress:
    """Rate-limited progress reports: to RunPod (when under its worker loop), the log, and optional sinks.

    A stage change is always sent; within a stage at most one update per `min_interval`
    seconds. After `close()` nothing is sent, so no update can land after the final result.
    """

    def __init__(
        self,
        job: dict | None,
        *,
        min_interval: float = 2.0,
        sinks: list[Callable[[dict], None]] | None = None,
        send_to_runpod: bool | None = None,
    ) -> None:
        self.job = job or {}
        self.min_interval = min_interval
        self.sinks = list(sinks or [])
        self.send_to_runpod = running_on_runpod() if send_to_runpod is None else send_to_runpod
        self._last_sent = 0.0
        self._last_stage: str | None = None
        self._closed = False
        self._lock = threading.Lock()
        # the job's secret scope: updates also come from threads that did not inherit it (boto3's
        # transfer threads report bytes sent)
        self._scope = current_scope()
        self.sent: list[dict] = []

    def update(self, stage: str, percent: float | None = None, message: str | None = None, *,
               force: bool = False, **extra: Any) -> bool:
        now = time.monotonic()
        with self._lock:
            if self._closed:
                return False
            if not force and stage == self._last_stage and now - self._last_sent < self.min_interval:
                return False
            self._last_stage, self._last_sent = stage, now
        data: dict[str, Any] = {"stage": stage}
        if percent is not None:
            data["percent"] = round(max(0.0, min(100.0, float(percent))), 1)
        if message:
            data["message"] = str(message)
        data.update(extra)
        with use_scope(current_scope() or self._scope):
            data = _redact_update(data)
        self.sent.append(data)
        log.info("progress %s", data)
        if self.send_to_runpod and self.job.get("id"):
            try:
                import runpod

                runpod.serverless.progress_update(self.job, data)
            except Exception as exc:  # progress is best effort, never fails a job
                log.warning("progress_update failed: %s", exc)
        for sink in self.sinks:
            try:
                sink(data)
            except Exception as exc:
                log.warning("progress sink failed: %s", exc)
        return True

    @property
    def stage(self) -> str | None:
        """The stage of the last update sent."""
        return self._last_stage

    def close(self) -> None:
        with self._lock:
            self._closed = True


def _redact_update(data: dict) -> dict:
    if "message" in data:
        data["message"] = redact_text(data["message"], limit=MAX_ECHO_CHARS)
    return redact(data)


def finish(result: dict, timings: Timings) -> dict:
    """Add `timings` and `worker_version` to a success result and mask any secret in it."""
    out = dict(result)
    out["timings"] = timings.as_dict()
    out["worker_version"] = worker_version()
    return redact(out, keep=PUBLIC_RESULT_FIELDS)


def register_input_secrets(raw: Any) -> None:
    """Register every scalar under a secret-looking key of raw job input (before validation)."""
    if isinstance(raw, dict):
        for k, v in raw.items():
            if isinstance(v, str) and is_sensitive_key(str(k)):
                register_secret(v)
            else:
                register_input_secrets(v)
    elif isinstance(raw, list):
        for v in raw:
            register_input_secrets(v)


Body = Callable[[dict, Timings], dict]


def run_job(job: dict, body: Body) -> dict:
    """Run a sync handler body with the contract applied: secrets registered (scoped to this job),
    errors converted."""
    with secret_scope():
        register_input_secrets(job.get("input"))
        timings = Timings()
        try:
            return finish(body(job, timings), timings)
        except Exception as exc:
            return _failure(job, exc)


async def to_thread_stoppable(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """`asyncio.to_thread(fn, ..., stop=event)`, with `event` set once the caller stops waiting.

    A thread can't be cancelled: when the job is cancelled or runs out of time, `fn` sees `stop`
    (between chunks, polls or denoising steps) and ends, instead of working on for nobody.
    """
    stop = threading.Event()
    try:
        return await asyncio.to_thread(fn, *args, stop=stop, **kwargs)
    finally:
        stop.set()


async def run_job_async(job: dict, body: Callable[[dict, Timings], Awaitable[dict]]) -> dict:
    with secret_scope():  # the task's own context: threads it starts with asyncio.to_thread share it
        register_input_secrets(job.get("input"))
        timings = Timings()
        try:
            return finish(await body(job, timings), timings)
        except asyncio.CancelledError:
            log.warning("job %s cancelled", job.get("id"))
            raise
        except Exception as exc:
            return _failure(job, exc)


def _failure(job: dict, exc: BaseException) -> dict:
    if isinstance(exc, JobError):
        log.warning("job %s failed: %s", job.get("id"), exc)
    else:
        log.exception("job %s failed unexpectedly", job.get("id"))
    result = error_result(exc)
    result["worker_version"] = worker_version()
    return result
