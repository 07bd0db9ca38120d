"""One redaction function for logs, progress updates, results and error messages.

Secrets reach a worker in job input (tokens, keys, presigned URLs) and in its
environment. Anything that leaves the process goes through `redact()` first.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable
from typing import Any

MASK = "***"

# Key names whose scalar values are secrets wherever they appear.
_SENSITIVE_KEY = re.compile(
    r"(token$|secret|password|passwd|authorization|credential|api[_-]?key|access[_-]?key|private[_-]?key"
    r"|^key$|_key$|^upload_url$|^cookie$)",
    re.IGNORECASE,
)

# Values that look like secrets whatever their key.
_PATTERNS = [
    # Authorization header values (Bearer / Basic / raw tokens after the colon).
    (re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(?:bearer\s+|basic\s+)?[^\s'\",}]+"), r"\1" + MASK),
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}"), "Bearer " + MASK),
    (re.compile(r"\bhf_[A-Za-z0-9]{8,}"), "hf_" + MASK),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), MASK),
    (re.compile(r"\brpa_[A-Za-z0-9]{8,}"), "rpa_" + MASK),
    (re.compile(r"\bAIza[0-9A-Za-z_-]{20,}"), MASK),
    # Query strings of signed URLs (S3 SigV4/V2, GCS, Azure SAS, generic token params).
    (
        re.compile(
            r"(https?://[^\s?'\"]+)\?[^\s'\"]*(?:X-Amz-Signature|X-Amz-Credential|Signature=|X-Goog-Signature"
            r"|sig=|[?&]token=|access_token=|AWSAccessKeyId=)[^\s'\"]*",
            re.IGNORECASE,
        ),
        r"\1?" + MASK,
    ),
    # key=value / "key": "value" pairs in free text.
    (
        re.compile(
            r"(?i)((?:token|secret|password|api[_-]?key|access[_-]?key|secret[_-]?key)['\"]?\s*[:=]\s*['\"]?)"
            r"(?!\*\*\*)[^\s'\",}&]+"
        ),
        r"\1" + MASK,
    ),
]

_registered: set[str] = set()
_lock = threading.Lock()
_MIN_SECRET_LEN = 6


def register_secret(*values: str | None) -> None:
    """Remember literal secret values (from job input) so they are masked in any text."""
    with _lock:
        for value in values:
            if isinstance(value, str) and len(value) >= _MIN_SECRET_LEN:
                _registered.add(value)
                if "?" in value and value.startswith(("http://", "https://")):
                    _registered.add(value.split("?", 1)[1])


def register_env_secrets(names: Iterable[str] = ()) -> None:
    """Register secrets held in the worker's environment (endpoint secrets)."""
    for name, value in os.environ.items():
        if name in names or is_sensitive_key(name):
            register_secret(value)


def is_sensitive_key(name: str) -> bool:
    return bool(_SENSITIVE_KEY.search(name))


def redact_text(text: str) -> str:
    with _lock:
        secrets = sorted(_registered, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


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
        return redact_text(super().format(record))


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
