"""Retrying transient failures (timeouts, dropped connections, 429, 5xx): one reading of `Retry-After`,
one backoff, one retry budget, for downloads, uploads and the operator CLI's API calls."""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime

RETRY_AFTER_CAP = 60.0  # the longest a server's Retry-After is honoured for; past it we retry (and count) anyway


def retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delay-seconds or an HTTP-date (RFC 9110 section 10.2.3),
    never negative; None when absent or unreadable."""
    if not value or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def backoff(failures: int, *, base: float, cap: float) -> float:
    """Exponential backoff: `base` after the first failure, doubled after each further one, at most `cap`."""
    return min(cap, base * 2 ** max(failures - 1, 0))


def delay(failures: int, *, base: float, cap: float, server_wait: float | None = None) -> float:
    """How long to wait before the next attempt: what the server asked for (`retry_after`, up to
    RETRY_AFTER_CAP), else the backoff."""
    if server_wait is not None:
        return min(server_wait, RETRY_AFTER_CAP)
    return backoff(failures, base=base, cap=cap)


class Budget:
    """Consecutive failures allowed before giving up. An attempt that got somewhere (a download that
    received `progress` bytes) starts the count afresh, so a long transfer over a flaky link is not
    given up on while a server that fails at once is."""

    def __init__(self, retries: int, *, progress: int | None = None):
        self.retries = retries
        self.progress = progress
        self.failures = 0

    def failed(self, made: int = 0) -> bool:
        """Count a failure of an attempt that made `made` units of progress; True while retrying is allowed."""
        if self.progress is not None and made >= self.progress:
            self.failures = 1
        else:
            self.failures += 1
        return self.failures <= self.retries
