"""JSON-over-HTTP calls with the retries every cloud API here needs (429 and 5xx, honouring Retry-After
as `common.retries` reads it).

A request that creates something (a RunPod job, a vast.ai instance) is retried only when the
service cannot have acted on it: 429, 503, or a connection that was never established. A 502
or a dropped connection after sending may mean it was accepted, and a blind retry would start
a second job or rent a second GPU: that failure is a `MaybeCreated` error, so the caller can say so.

Network failures name the host, each retry is announced on stderr, and an
unreachable host is given up on within seconds (a 5 s connect timeout, two quick retries).
Loops that follow something long (a RunPod job, a renting instance) poll through an outage
instead (`OutageTolerance`): a minute of lost Wi-Fi must not end a two-hour `--follow`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import NewConnectionError

from common import retries
from scripts.gpuworker.console import CliError, mask_keys


def announce(message: str) -> None:
    """A retry, on stderr even with `--quiet` or `--json` (a silent wait looks like a hang)."""
    print(mask_keys(message), file=sys.stderr, flush=True)


RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
RETRY_STATUS_UNSAFE = frozenset({429, 503})  # not processed: safe to resend a creating request
MAX_BACKOFF = 30.0
CONNECT_TIMEOUT = 5.0
NETWORK_RETRIES = 2  # an unreachable host: given up on after ~3 connect attempts, not minutes


class MaybeCreated(CliError):
    """A creating request was sent but its answer was lost: the thing may exist (and bill)."""


class Unreachable(CliError):
    """The service could not be reached, or stopped answering, after the quick retries."""


OUTAGE_WINDOW = 300.0  # how long a polling loop keeps polling through a network outage


class OutageTolerance:
    """Lets a polling loop ride out a network outage of up to `window` seconds, saying so on stderr.

    `call(fn)` returns `fn()`, or None while the service has been unreachable for less than
    `window` seconds in a row; past that the `Unreachable` error is raised as it is."""

    def __init__(self, window: float = OUTAGE_WINDOW, clock: Callable[[], float] = time.monotonic):
        self.window = window
        self.clock = clock
        self.since: float | None = None

    def call(self, fn: Callable[[], Any]) -> Any:
        try:
            result = fn()
        except Unreachable as exc:
            now = self.clock()
            self.since = now if self.since is None else self.since
            if now - self.since >= self.window:
                raise
            announce(f"{exc.message}; polling on through the outage "
                     f"({now - self.since:.0f} of at most {self.window:.0f} s)")
            return None
        if self.since is not None:
            announce(f"reachable again after {self.clock() - self.since:.0f} s")
        self.since = None
        return result


def _never_connected(exc: requests.RequestException) -> bool:
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(exc, requests.ConnectionError) and isinstance(reason, NewConnectionError)


def error_text(resp: requests.Response) -> str:
    """The service's own error message from a JSON body (`error`, `msg`, `message`), else the text."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip()[:300] or resp.reason or ""
    if isinstance(body, dict):
        parts = [str(body[k]) for k in ("error", "msg", "message", "detail") if body.get(k)]
        if parts:
            return ": ".join(dict.fromkeys(parts))
    return str(body)[:300]


def _failure(exc: requests.RequestException) -> str:
    """`ConnectTimeout`, `ConnectionError: connection refused`, ... without the URL (it may hold a query key)."""
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    detail = str(reason or "").split(": ", 1)[-1] if reason else ""
    if "Connection refused" in detail:
        detail = "connection refused"
    elif "Name or service not known" in detail or "nodename nor servname" in detail:
        detail = "unknown host"
    return type(exc).__name__ + (f": {detail}" if detail and len(detail) < 80 else "")


class JsonApi:
    """One base URL, one auth header, retried calls. The key is only ever put in the header."""

    def __init__(self, base_url: str, *, auth_header: dict[str, str], service: str, retries: int = 5,
                 backoff: float = 0.5, timeout: float = 60.0, sleep: Callable[[float], None] = time.sleep):
        self.base_url = base_url.rstrip("/")
        self.host = urlsplit(self.base_url).netloc
        self.service = f"{service} ({self.host})"
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.sleep = sleep
        self.session = requests.Session()
        self.session.headers.update(auth_header)
        self.session.headers["Accept"] = "application/json"

    def request(self, method: str, path: str, *, json_body: Any = None, params: dict | None = None,
                timeout: float | None = None, ok_status: tuple[int, ...] = (), creates: bool = False) -> Any:
        """Return the decoded JSON body; raise `CliError` naming the service, host, route and reason.

        `creates`: the request starts something billable; see the module docstring."""
        url = f"{self.base_url}/{path.lstrip('/')}"
        route = "/" + path.lstrip("/").split("?", 1)[0]
        network_failures = 0
        for attempt in range(self.retries + 1):
            try:
                resp = self.session.request(method, url, json=json_body, params=params,
                                            timeout=(CONNECT_TIMEOUT, timeout or self.timeout))
            except requests.RequestException as exc:
                never_connected = _never_connected(exc)
                network_failures += 1
                if network_failures <= NETWORK_RETRIES and (not creates or never_connected):
                    wait = retries.backoff(network_failures, base=self.backoff, cap=MAX_BACKOFF)
                    announce(f"{self.service} {route}: {_failure(exc)}; retrying in {wait:g} s "
                             f"({network_failures}/{NETWORK_RETRIES})")
                    self.sleep(wait)
                    continue
                if creates and not never_connected:
                    raise MaybeCreated(f"{self.service} {route}: the request was sent but no answer came back "
                                       f"({_failure(exc)})") from None
                what = "cannot connect" if never_connected else "no answer"
                raise Unreachable(f"{self.service} {route}: {what} ({_failure(exc)}); "
                               f"gave up after {network_failures} attempt(s)") from None
            if resp.status_code in (RETRY_STATUS_UNSAFE if creates else RETRY_STATUS) and attempt < self.retries:
                wait = retries.delay(attempt + 1, base=self.backoff, cap=MAX_BACKOFF,
                                     server_wait=retries.retry_after(resp.headers.get("Retry-After")))
                announce(f"{self.service} {route}: HTTP {resp.status_code}; retrying in {wait:g} s "
                         f"({attempt + 1}/{self.retries})")
                self.sleep(wait)
                continue
            if resp.status_code == 401 or resp.status_code == 403:
                raise CliError(f"{self.service} {route}: HTTP {resp.status_code}: the API key was refused "
                               f"({error_text(resp) or 'unauthorized'})")
            if creates and resp.status_code in RETRY_STATUS - RETRY_STATUS_UNSAFE:
                raise MaybeCreated(f"{self.service} {route}: HTTP {resp.status_code}: {error_text(resp)}")
            if resp.status_code >= 400 and resp.status_code not in ok_status:
                raise CliError(f"{self.service} {route}: HTTP {resp.status_code}: {error_text(resp)}")
            if not resp.content:
                return {}
            try:
                return resp.json()
            except ValueError:
                raise CliError(f"{self.service} {route}: answer is not JSON: {resp.text[:200]!r}") from None
        raise AssertionError("unreachable")
