"""One redaction function for logs, progress updates, results and error messages.

Secrets reach a worker in job input (tokens, keys, presigned URLs) and in its
environment. Anything that leaves the process goes through `redact()` first.
"""

from __future__ import annotations

import heapq
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any
from urllib.parse import parse_qsl, quote

MASK = "***"

# Key names whose scalar values are secrets wherever they appear.
_SENSITIVE_KEY = re.compile(
    r"(token$|secret|password|passwd|authorization|credential|api[_-]?key|access[_-]?key|private[_-]?key"
    r"|^key$|_key$|^upload_url$|^cookie$)",
    re.IGNORECASE,
)

# Values that look like secrets whatever their key: (pattern, replacement, words one of which the
# lowercased text must contain for the pattern to be tried at all; most text skips most patterns).
_SIGNED_MARKERS = ("x-amz-signature", "x-amz-credential", "x-amz-security-token", "signature=",
                   "x-goog-signature", "x-goog-credential", "sig=", "token=", "access_token=", "awsaccesskeyid=")
_PATTERNS = [
    # Authorization header values (Bearer / Basic / raw tokens after the colon).
    (re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(?:bearer\s+|basic\s+)?[^\s'\",}]+"), r"\1" + MASK,
     ("authorization",)),
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}"), "Bearer " + MASK, ("bearer",)),
    (re.compile(r"\bhf_[A-Za-z0-9]{8,}"), "hf_" + MASK, ("hf_",)),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), MASK, ("akia", "asia")),
    (re.compile(r"\brpa_[A-Za-z0-9]{8,}"), "rpa_" + MASK, ("rpa_",)),
    (re.compile(r"\bAIza[0-9A-Za-z_-]{20,}"), MASK, ("aiza",)),
    # Query strings of signed URLs (S3 SigV4/V2, GCS, Azure SAS, generic token params), absolute or
    # not (urllib3's DEBUG line shows `"GET /path?X-Amz-Signature=..."`): everything after the first
    # `?` of a whitespace-delimited word is masked when it holds a signature parameter.
    # Linear time: the lookbehind lets a match start only where a word starts, so each word is
    # scanned once (a pattern starting at every `http://` rescans the rest of the word each time).
    (
        re.compile(
            r"(?<![^\s'\"])([^\s'\"?]*)\?[^\s'\"]*?(?:X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token"
            r"|Signature=|X-Goog-Signature|X-Goog-Credential|sig=|(?<=[?&])token=|access_token=|AWSAccessKeyId=)"
            r"[^\s'\"]*",
            re.IGNORECASE,
        ),
        r"\1?" + MASK,
        _SIGNED_MARKERS,
    ),
    # key=value / "key": "value" pairs in free text.
    (
        re.compile(
            r"(?i)((?:token|secret|password|api[_-]?key|access[_-]?key|secret[_-]?key)['\"]?\s*[:=]\s*['\"]?)"
            r"(?!\*\*\*)[^\s'\",}&]+"
        ),
        r"\1" + MASK,
        ("token", "secret", "password", "key"),
    ),
]

# Query parameters whose values are signatures or credentials: registered one by one as well, so a
# storage server that echoes one back (S3's SignatureDoesNotMatch names the signature it got) is masked.
_SECRET_PARAMS = re.compile(
    r"^(x-amz-signature|x-amz-credential|x-amz-security-token|signature|x-goog-signature|x-goog-credential"
    r"|sig|token|access_token|awsaccesskeyid)$",
    re.IGNORECASE,
)

_MIN_SECRET_LEN = 6
# A job registers at most this many literals (oldest forgotten first), and so does the process outside
# any job; every text redacted is searched for each one, so the bound is what keeps a log line cheap.
MAX_SECRETS = 256
# What error messages, details and progress messages echo of any text (user text included).
MAX_ECHO_CHARS = 2000
# A log line longer than this is cut (after redaction).
MAX_LOG_CHARS = 64 * 1024


class _Secrets:
    """A bounded, insertion-ordered set of literal secrets, with a cached longest-first view."""

    def __init__(self, limit: int | None) -> None:
        self._limit = limit
        self._items: dict[str, None] = {}
        self._lock = threading.Lock()
        self._view: tuple[str, ...] | None = ()  # longest first; None once stale

    def add(self, value: str) -> None:
        with self._lock:
            self._items.pop(value, None)
            self._items[value] = None
            while self._limit is not None and len(self._items) > self._limit:
                del self._items[next(iter(self._items))]
            self._view = None

    def view(self) -> tuple[str, ...]:
        view = self._view
        if view is None:
            with self._lock:
                view = self._view = tuple(sorted(self._items, key=len, reverse=True))
        return view


_env = _Secrets(None)  # the worker's environment: global and unbounded (the environment is finite)
_loose = _Secrets(MAX_SECRETS)  # registered outside any job (CLI keys, gateway lease tokens)
_job: ContextVar[_Secrets | None] = ContextVar("job_secrets", default=None)
_live: set[_Secrets] = set()  # scopes of the jobs running now: log lines mask all of them
_live_lock = threading.Lock()


@contextmanager
def secret_scope() -> Iterator[None]:
    """Secrets registered inside are the current job's: they mask its results, progress and errors, and
    every log line while it runs, but never another job's output (which would also tell that job's
    client whether a string it sent is someone else's secret). Threads started with the context
    (`asyncio.to_thread`, `contextvars.copy_context().run`) share the scope."""
    scope = _Secrets(MAX_SECRETS)
    token = _job.set(scope)
    with _live_lock:
        _live.add(scope)
    try:
        yield
    finally:
        with _live_lock:
            _live.discard(scope)
        _job.reset(token)


def current_scope() -> object | None:
    """The secret scope of the running job (opaque), to hand to `use_scope` in another thread."""
    return _job.get()


@contextmanager
def use_scope(scope: object | None) -> Iterator[None]:
    """Redact (and register) with `scope`, from a thread that did not inherit the job's context."""
    token = _job.set(scope)  # type: ignore[arg-type]
    try:
        yield
    finally:
        _job.reset(token)


def _literals(value: str) -> list[str]:
    out = [value]
    if "?" in value and value.startswith(("http://", "https://")):
        query = value.split("?", 1)[1].split("#", 1)[0]
        out.append(query)
        for name, raw in parse_qsl(query, keep_blank_values=False):
            if _SECRET_PARAMS.match(name):
                out.append(raw)
                out.append(quote(raw, safe=""))
    return [v for v in out if len(v) >= _MIN_SECRET_LEN]


def register_secret(*values: str | None) -> None:
    """Remember literal secret values (from job input) so they are masked in any text.

    Inside a `secret_scope()` (every job run by `common.jobs`) they belong to that job;
    outside one they are kept process-wide (bounded)."""
    target = _job.get() or _loose
    for value in values:
        if isinstance(value, str) and len(value) >= _MIN_SECRET_LEN:
            for literal in _literals(value):
                target.add(literal)


def register_env_secrets(names: Iterable[str] = ()) -> None:
    """Register secrets held in the worker's environment (endpoint secrets): masked everywhere."""
    names = set(names)
    for name, value in os.environ.items():
        if (name in names or is_sensitive_key(name)) and len(value) >= _MIN_SECRET_LEN:
            for literal in _literals(value):
                _env.add(literal)


def is_sensitive_key(name: str) -> bool:
    return bool(_SENSITIVE_KEY.search(name))


def clip(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """`text` cut to about `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more characters]"


def _mask(text: str, groups: Iterable[tuple[str, ...]]) -> str:
    # longest first across all groups, so a secret that contains another is masked whole
    for secret in heapq.merge(*groups, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    low = text.lower()
    exact = len(low) == len(text)  # else some character lowercases to several: try every pattern
    for pattern, repl, words in _PATTERNS:
        if not exact or any(word in low for word in words):
            text = pattern.sub(repl, text)
    return text


def redact_text(text: str, *, limit: int | None = None) -> str:
    """`text` with the secrets of the current job, of the environment and the known patterns masked;
    cut to `limit` characters (after masking, so no secret is cut in half) when given."""
    scope = _job.get()
    text = _mask(text, (scope.view() if scope else (), _env.view(), _loose.view()))
    return clip(text, limit) if limit is not None else text


def _redact_log_line(text: str) -> str:
    """A log line is the operator's: every running job's secrets are masked in it (a thread that did
    not inherit a job's context still logs for that job)."""
    with _live_lock:
        scopes = [s.view() for s in _live]
    current = _job.get()
    if current is not None and current not in _live:
        scopes.append(current.view())
    return clip(_mask(text, (*scopes, _env.view(), _loose.view())), MAX_LOG_CHARS)


def redact(value: Any, *, keep: frozenset[str] | set[str] = frozenset()) -> Any:
    """Return a copy of `value` with secrets masked.

    `keep` names dict keys whose string values are passed through untouched:
    used for the download links a result exists to hand out.
    """
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            key = str(k)
            if key in keep and isinstance(v, str):
                out[k] = v
            elif is_sensitive_key(key) and v is not None and not isinstance(v, (dict, list, tuple, bool)):
                out[k] = MASK
            else:
                out[k] = redact(v, keep=keep)
        return out
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v, keep=keep) for v in value)
    return value


class RedactingFormatter(logging.Formatter):
    """Formats a record as usual, then masks secrets in the whole line (message, args, traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        return _redact_log_line(super().format(record))


def configure_logging(level: str | int | None = None) -> None:
    """Route all logging through one redacting handler on stderr."""
    level = level or os.environ.get("LOG_LEVEL", "INFO")
    root = logging.getLogger()
    root.setLevel(level if isinstance(level, int) else str(level).upper())
    fmt = RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Replace plain stream handlers (the runpod SDK's import adds one) so no line escapes redaction.
    for handler in list(root.handlers):
        if not getattr(handler, "_redacting", False) and type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    if not any(getattr(h, "_redacting", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler._redacting = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    for handler in root.handlers:
        handler.setFormatter(fmt)
