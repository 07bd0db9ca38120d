"""What every upload method shares: the artifact, error kinds, retries, byte progress, and `send()`,
the one way an HTTP upload leaves the worker (SSRF guard for job-named destinations, no redirects,
a bounded answer)."""

from __future__ import annotations

import io
import logging
import mimetypes
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from common import retries
from common.hashing import file_sha256
from common.jobs import Progress
from common.redaction import redact_text

log = logging.getLogger("uploads")

T = TypeVar("T")

USER_AGENT = "gpu-worker-images-uploader/1.0"
MAX_ANSWER_BYTES = 64 << 10  # what is read of an upload's answer (a link, or an error page)
EXCERPT_CHARS = 200  # what an error message quotes of it


class UploadError(Exception):
    """This method cannot deliver the artifact (bad credentials, refused, over a limit)."""


class TransientUploadError(UploadError):
    """Worth trying again: timeouts, dropped connections, 5xx, 429; `retry_after`: the seconds the
    server asked for (its Retry-After header), if it did."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class Artifact:
    """One file to deliver (a single output, or the zip of several).

    Its sha256 is computed on a background thread from construction on, so hashing a
    multi-GB file overlaps the upload instead of delaying it (hashlib releases the GIL).
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.size = self.path.stat().st_size
        self._digest: str | None = None
        self._hasher = threading.Thread(target=self._hash, name="sha256", daemon=True)
        self._hasher.start()

    def _hash(self) -> None:
        self._digest = file_sha256(self.path)

    @property
    def sha256(self) -> str:
        self._hasher.join()
        assert self._digest is not None
        return self._digest

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def content_type(self) -> str:
        if self.path.suffix == ".safetensors":
            return "application/octet-stream"
        return mimetypes.guess_type(self.path.name)[0] or "application/octet-stream"


def env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def timeouts() -> tuple[float, float]:
    """(connect, read) seconds for HTTP uploads; env `UPLOAD_CONNECT_TIMEOUT` / `UPLOAD_READ_TIMEOUT`."""
    return env_float("UPLOAD_CONNECT_TIMEOUT", 10.0), env_float("UPLOAD_READ_TIMEOUT", 300.0)


MAX_BACKOFF_SECONDS = 30.0


def with_retries(method: str, fn: Callable[[], T]) -> T:
    """Call `fn`, retrying `TransientUploadError` after the server's Retry-After, else with exponential
    backoff. Env `UPLOAD_RETRIES` (attempts, default 3) and `UPLOAD_RETRY_BASE_SECONDS` (default 2)."""
    attempts = max(1, int(env_float("UPLOAD_RETRIES", 3)))
    base = env_float("UPLOAD_RETRY_BASE_SECONDS", 2.0)
    budget = retries.Budget(attempts - 1)
    while True:
        try:
            return fn()
        except TransientUploadError as exc:
            if not budget.failed():
                raise
            delay = retries.delay(budget.failures, base=base, cap=MAX_BACKOFF_SECONDS, server_wait=exc.retry_after)
            log.warning("%s upload attempt %d/%d failed (%s); retrying in %.1fs",
                        method, budget.failures, attempts, redact_text(str(exc)), delay)
            time.sleep(delay)


def excerpt(body: str) -> str:
    """A bounded, redacted one-line quote of what a server answered (it may echo a signature back)."""
    return redact_text(" ".join(body[:EXCERPT_CHARS * 20].split()), limit=EXCERPT_CHARS)


def raise_for_http(method: str, answer: Answer) -> None:
    """Map an HTTP status to the right error kind (2xx passes)."""
    status = answer.status_code
    if 200 <= status < 300:
        return
    excerpt_ = excerpt(answer.text)
    message = f"{method} answered HTTP {status}" + (f": {excerpt_}" if excerpt_ else "")
    if status == 429 or status >= 500 or status == 408:
        raise TransientUploadError(message, retries.retry_after(answer.headers.get("Retry-After")))
    raise UploadError(message)


def http_failure(method: str, exc: Exception) -> TransientUploadError:
    """A requests exception (timeout, connection reset) as a retryable error without URL secrets."""
    return TransientUploadError(redact_text(f"{method}: {type(exc).__name__}: {exc}", limit=EXCERPT_CHARS * 2))


class Answer:
    """Status, headers and the first MAX_ANSWER_BYTES of an upload's answer, decoded."""

    def __init__(self, status: int, headers: Mapping[str, str], text: str):
        self.status_code = status
        self.headers = headers
        self.text = text


def send(method: str, http_method: str, url: str, *, job_named: bool, **kwargs: Any) -> Answer:
    """One upload request. A destination the job named gets the SSRF guard of downloads (private
    addresses only with ALLOW_PRIVATE_NETWORK=1, metadata addresses never), checked on the address
    actually connected to; one from the operator's environment is trusted (metadata still refused).
    Redirects are not followed (a streamed body cannot be sent twice, and the next hop is nobody's
    choice); at most MAX_ANSWER_BYTES of the answer are read."""
    import requests

    from common.downloads import Refused, destination_refusal, guarded_session, private_allowed

    allow = private_allowed() if job_named else True
    if job_named:
        reason = destination_refusal(url, allow)
        if reason:
            raise UploadError(f"{method}: refused: {reason}")
    with guarded_session(allow) as session:
        try:
            resp = session.request(http_method, url, stream=True, allow_redirects=False, timeout=timeouts(),
                                   **kwargs)
        except Refused as exc:
            raise UploadError(f"{method}: refused: {exc}") from None
        except requests.RequestException as exc:
            raise http_failure(method, exc) from None
        try:
            raw = resp.raw.read(MAX_ANSWER_BYTES, decode_content=True) or b""
        except Exception as exc:  # the answer broke off: the upload's fate is unknown, try again
            raise http_failure(method, exc) from None
        finally:
            resp.close()
    return Answer(resp.status_code, resp.headers, raw.decode(resp.encoding or "utf-8", "replace"))


class ProgressFile:
    """A read-only file object that reports bytes read, for streaming uploads with progress."""

    def __init__(self, path: Path, on_bytes: Callable[[int], None] | None):
        self._fh = path.open("rb")
        self._on_bytes = on_bytes
        self.len = path.stat().st_size  # requests uses it for Content-Length

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size)
        if data and self._on_bytes:
            self._on_bytes(len(data))
        return data

    def __len__(self) -> int:
        return self.len

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> ProgressFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class MultipartFile:
    """A `multipart/form-data` body that streams one file from disk.

    requests' own `files=` builds the whole body in memory first (1 GB for a full litterbox
    upload) and reports no progress while sending; this reads the file as the socket takes it.
    """

    def __init__(self, fields: dict[str, str], file_field: str, path: Path, content_type: str,
                 on_bytes: Callable[[int], None] | None):
        boundary = secrets.token_hex(16)
        filename = path.name.replace('"', "%22").replace("\r", "").replace("\n", "")
        head = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
                       for k, v in fields.items())
        head += (f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{filename}"\r\n'
                 f"Content-Type: {content_type}\r\n\r\n")
        tail = f"\r\n--{boundary}--\r\n".encode()
        self.content_type = f"multipart/form-data; boundary={boundary}"
        self._file = ProgressFile(path, on_bytes)
        self._parts: list[Any] = [io.BytesIO(head.encode()), self._file, io.BytesIO(tail)]
        self.len = len(head.encode()) + self._file.len + len(tail)  # requests sends it as Content-Length

    def read(self, size: int = -1) -> bytes:
        out = b""
        while self._parts and (size < 0 or len(out) < size):
            chunk = self._parts[0].read(-1 if size < 0 else size - len(out))
            if not chunk:
                self._parts.pop(0)
            out += chunk
        return out

    def __len__(self) -> int:
        return self.len

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> MultipartFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def byte_reporter(progress: Progress | None, method: str, total: int) -> Callable[[int], None] | None:
    """A callback adding up bytes sent and reporting `upload` progress (rate-limited by Progress)."""
    if progress is None:
        return None
    sent = 0
    lock = threading.Lock()  # S3 multipart calls back from several threads

    def on_bytes(n: int) -> None:
        nonlocal sent
        with lock:
            sent += n
        progress.update("upload", 100.0 * sent / max(total, 1),
                        f"{method}: {sent / 2**20:.1f} of {total / 2**20:.1f} MiB", method=method,
                        force=sent >= total)  # the last one always goes out

    return on_bytes
