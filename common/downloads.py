"""Safe downloads of job inputs and model files: https/http, s3:// and hf:// URLs.

- The body streams into `<dest>.partial` and is renamed onto `dest` only when complete and
  verified. A partial file left by a dropped connection (or an earlier, failed call) is resumed
  with an HTTP Range request; a sidecar `<dest>.partial.json` remembers which URL and which
  version (ETag / Last-Modified) it holds, so a changed file is started again, not spliced.
- Transient failures (connection drops, timeouts, 5xx, 429) are retried with backoff. Attempts
  that received at least `PROGRESS_BYTES` do not use up the retries (a server that sends a byte and
  drops does). A 206 reply that does not start where the partial file ends is refused.
- Each download has an overall deadline (`timeout_s`, env `DOWNLOAD_TIMEOUT_S`, default 2 h). A
  watcher shuts the download's sockets down when it passes or when `stop` is set, so a read
  blocked on a server dripping a byte a second ends within a second; the partial file is kept
  after a deadline (a later call resumes it).
- `max_bytes` is enforced from Content-Length before the body is read and again while streaming.
- SSRF guard: every host (each redirect hop, followed by hand) is resolved and refused when it is
  loopback, private, CGNAT, link-local, unspecified, multicast or reserved, unless `allow_private`
  or env `ALLOW_PRIVATE_NETWORK=1` (alias `ALLOW_PRIVATE_DOWNLOADS=1`). `common.uploads` applies the
  same guard to the destinations a job names. The address actually connected to is checked again, which
  defeats DNS rebinding. Cloud metadata endpoints (all of 169.254.0.0/16, fd00:ec2::254,
  100.100.100.200, metadata.google.internal, ...) are refused even then.
- s3://bucket/key uses boto3 (env `S3_ENDPOINT_URL`, `AWS_*`); the endpoint is operator
  configuration, so it is trusted. hf://<owner>/<name>/<path>[@rev] (also `hf://datasets/...`,
  `hf://spaces/...` and `hf://<owner>/<name>@rev/<path>`) is resolved with huggingface_hub
  against `HF_ENDPOINT`, with the token from `headers` or `HF_TOKEN`, and streamed like https; its
  owner, name and path may not hold `.`/`..` segments (which would climb to other Hub API routes).
- A redirect to another host (or scheme or port) carries none of the caller's headers: tokens,
  cookies and API keys are for the host they were given for.
- Every failure is `JobError("download_failed", ...)` naming the URL without its query string.
- `stop` (a threading.Event) ends a download that runs on a thread the job no longer waits for
  (cancelled, out of time) within about a second, mid-read included; `JobError("cancelled")`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import requests
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import HTTPError as Urllib3Error

from common import retries
from common.jobs import JobError
from common.redaction import is_sensitive_key, redact_text, register_secret

log = logging.getLogger("downloads")

SCHEMES = ("https", "http", "s3", "hf")
CHUNK_BYTES = 1 << 20
RETRIES = 5  # consecutive attempts that received less than PROGRESS_BYTES before giving up
PROGRESS_BYTES = 1 << 20  # an attempt that received this much starts the retry count afresh
DEFAULT_TIMEOUT_S = 2 * 3600.0  # overall deadline of one download (env DOWNLOAD_TIMEOUT_S)
WATCH_INTERVAL_S = 0.2  # how often the watcher looks at `stop` and the deadline
BACKOFF_SECONDS = 1.0  # doubled on each consecutive failure
MAX_BACKOFF_SECONDS = 30.0
MAX_REDIRECTS = 10
CONNECT_TIMEOUT = 15.0
READ_TIMEOUT = 60.0

# Refused whatever `allow_private` says: instance metadata services hand out credentials.
# All of link-local is included (AWS, GCP, Azure, OCI, DigitalOcean live at 169.254.169.254,
# ECS task metadata at 169.254.170.2); a file is never legitimately served from there.
METADATA_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "100.100.100.200/32", "192.0.0.192/32")
)
METADATA_HOSTS = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.tencentyun.com",
        "metadata.platformequinix.com",
    }
)

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


_TRUE = ("1", "true", "yes")
PRIVATE_HINT = " (set ALLOW_PRIVATE_NETWORK=1 to allow private addresses)"


def private_allowed(allow_private: bool = False) -> bool:
    """`allow_private`, or the operator's switch `ALLOW_PRIVATE_NETWORK=1` (old name `ALLOW_PRIVATE_DOWNLOADS`)."""
    return allow_private or any(os.environ.get(name, "").lower() in _TRUE
                                for name in ("ALLOW_PRIVATE_NETWORK", "ALLOW_PRIVATE_DOWNLOADS"))


def download_timeout() -> float:
    """Seconds one download may take in all (env `DOWNLOAD_TIMEOUT_S`)."""
    raw = os.environ.get("DOWNLOAD_TIMEOUT_S", "")
    try:
        value = float(raw) if raw.strip() else DEFAULT_TIMEOUT_S
    except ValueError:
        raise JobError("internal", f"DOWNLOAD_TIMEOUT_S={raw!r} is not a number of seconds") from None
    return value if value > 0 else DEFAULT_TIMEOUT_S


def _unwrap_v4(ip: ipaddress.IPv4Address | ipaddress.IPv6Address):
    """The IPv4 address an IPv6 address carries (mapped, 6to4, NAT64, compatible), else `ip`."""
    if ip.version == 4:
        return ip
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip.sixtofour:
        return ip.sixtofour
    if ip in _NAT64 or (int(ip) >> 32 == 0 and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def address_refusal(address: str, allow_private: bool) -> str | None:
    """Why a download may not connect to `address`, or None when it may."""
    ip = _unwrap_v4(ipaddress.ip_address(address.split("%", 1)[0]))
    if any(ip in net for net in METADATA_NETWORKS if net.version == ip.version):
        return "a cloud metadata / link-local address"
    if allow_private:
        return None
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if not ip.is_global:
        return "a private or reserved address"
    return None


class Refused(Exception):
    """Raised inside a connection attempt to an address the guard refuses."""


class _GaveUp(Exception):
    """Retries are exhausted; the partial file is kept so a later call resumes it."""


class _Watch:
    """Ends one download's blocking reads when `stop` is set or its deadline passes.

    A read waits up to READ_TIMEOUT for each byte, so a server that drips one byte a second holds it
    forever; shutting the socket down from this thread wakes it at once. The sockets are those the
    guarded pools open while this watch is the current one (a context variable: the download's thread).
    """

    def __init__(self, stop: threading.Event, seconds: float):
        self.stop = stop
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.reason: str | None = None  # "stopped" or "deadline", once it has fired
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._token = None

    def __enter__(self) -> _Watch:
        self._token = _WATCH.set(self)
        threading.Thread(target=self._run, name="download-watch", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        _WATCH.reset(self._token)
        with self._lock:
            self._sockets.clear()

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            fired = self.reason is not None
        if fired:
            _shutdown(sock)

    def _due(self) -> str | None:
        if self.stop.is_set():
            return "stopped"
        if self.remaining() <= 0:
            return "deadline"
        return None

    def _run(self) -> None:
        while not self._done.wait(WATCH_INTERVAL_S):
            reason = self._due()
            if reason:
                with self._lock:
                    self.reason = reason  # before the shutdown: the reader that wakes sees why
                    sockets = list(self._sockets)
                for sock in sockets:
                    _shutdown(sock)
                return

    def check(self, shown: str, size: int) -> None:
        """Raise when the download must end: cancelled (stop) or over its deadline."""
        reason = self.reason or self._due()
        if reason == "stopped":
            raise JobError("cancelled", f"download of {shown} stopped: the job ended")
        if reason == "deadline":
            raise _GaveUp(f"took longer than {self.seconds:g} s (DOWNLOAD_TIMEOUT_S); "
                          f"{size} bytes kept for a later resume")


_WATCH: ContextVar[_Watch | None] = ContextVar("download_watch", default=None)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


class _Transient(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def _guarded_pools(allow_private: bool) -> dict[str, type]:
    """urllib3 pool classes whose connections check the peer address right after connecting."""

    class Guard:
        def _new_conn(self):
            sock = super()._new_conn()
            peer = sock.getpeername()[0]
            reason = address_refusal(peer, allow_private)
            if reason:
                sock.close()
                raise Refused(f"connected to {peer}, {reason}")
            watch = _WATCH.get()
            if watch is not None:
                watch.add(sock)
            return sock

    http_conn = type("GuardedHTTPConnection", (Guard, HTTPConnection), {})
    https_conn = type("GuardedHTTPSConnection", (Guard, HTTPSConnection), {})
    return {
        "http": type("GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
        "https": type("GuardedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}),
    }


_POOLS = {flag: _guarded_pools(flag) for flag in (False, True)}


class _GuardedAdapter(requests.adapters.HTTPAdapter):
    def __init__(self, allow_private: bool):
        self._pools = _POOLS[allow_private]
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = self._pools


def guarded_session(allow_private: bool) -> requests.Session:
    """A requests session whose every connection is checked against the SSRF guard once connected
    (raises `Refused`); no proxies or .netrc from the environment. Callers pass allow_redirects=False
    and check each hop themselves."""
    session = requests.Session()
    session.trust_env = False  # no proxies or .netrc from the environment: the guard checks the real peer
    adapter = _GuardedAdapter(allow_private)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def shown_url(url: str) -> str:
    """The URL fit for messages and logs: no user info, query string or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host + (f":{parts.port}" if parts.port else "")
        return redact_text(urlunsplit((parts.scheme, netloc, parts.path, "", "")))
    except ValueError:
        return "<malformed URL>"


def _fail(shown: str, reason: str) -> JobError:
    return JobError("download_failed", f"{shown}: {reason}")


def _check_host(host: str | None, port: int, allow_private: bool, shown: str) -> None:
    if not host:
        raise _fail(shown, "the URL has no host")
    name = host.rstrip(".").lower()
    if name in METADATA_HOSTS:
        raise _fail(shown, f"refused: {host} is a cloud metadata host")
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:
            raise _Transient(f"cannot resolve {host} ({exc})") from None
        raise _fail(shown, f"cannot resolve {host} ({exc.strerror})") from None
    except UnicodeError:
        raise _fail(shown, f"invalid host name {host!r}") from None
    for info in infos:
        address = info[4][0]
        reason = address_refusal(address, allow_private)
        if reason:
            hint = "" if "metadata" in reason else PRIVATE_HINT
            raise _fail(shown, f"refused: {host} resolves to {address}, {reason}{hint}")


def destination_refusal(url: str, allow_private: bool | None = None) -> str | None:
    """Why a request to `url`, a destination a job named, must not be made (the SSRF guard of
    downloads), or None. `allow_private` defaults to the operator's switch. A host that does not
    resolve now is not refused here: the request itself fails."""
    allow = private_allowed() if allow_private is None else allow_private
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return "malformed URL"
    if parts.scheme not in ("http", "https"):
        return f"unsupported scheme {parts.scheme!r}"
    if not host:
        return "the URL has no host"
    if host.rstrip(".").lower() in METADATA_HOSTS:
        return f"{host} is a cloud metadata host"
    try:
        infos = socket.getaddrinfo(host.rstrip(".").lower(), port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    for info in infos:
        reason = address_refusal(info[4][0], allow)
        if reason:
            hint = "" if "metadata" in reason else PRIVATE_HINT
            return f"{host} resolves to {info[4][0]}, {reason}{hint}"
    return None


@dataclass
class _Body:
    start: int  # byte offset of the first body byte in the file
    total: int | None  # size of the whole file, when known
    chunks: Iterator[bytes]
    close: Callable[[], None]
    validator: str | None = None  # ETag / Last-Modified, for If-Range on a later resume


def _describe(exc: BaseException, query: str) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if query:
        text = text.replace("?" + query, "").replace(query, "")
    return redact_text(text)[:300]


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """`bytes a-b/N` -> (a, N); `bytes */N` -> (None, N); N may be unknown (`*`)."""
    if not value or not value.startswith("bytes "):
        return None, None
    span, _, total = value[6:].partition("/")
    start = int(span.split("-", 1)[0]) if span != "*" else None
    return start, (int(total) if total.isdigit() else None)


_PROTOCOL_HEADERS = frozenset({"Accept-Encoding", "Range", "If-Range"})


def _http_opener(url: str, headers: dict[str, str], allow_private: bool, shown: str):
    session = guarded_session(allow_private)
    query = urlsplit(url).query

    def stream(resp: requests.Response) -> Iterator[bytes]:
        # read1: what has arrived, at most a chunk; read(n) would sit until n bytes came, and the bytes
        # of a trickle would be lost with the connection instead of kept for a resume.
        try:
            while chunk := resp.raw.read1(CHUNK_BYTES, decode_content=False):
                yield chunk
        except (requests.RequestException, Urllib3Error, OSError) as exc:
            raise _Transient(_describe(exc, query)) from None

    def open_body(offset: int, validator: str | None) -> _Body:
        hdrs = {"Accept-Encoding": "identity", **headers}
        if offset:
            hdrs["Range"] = f"bytes={offset}-"
            if validator:
                hdrs["If-Range"] = validator
        current = url
        for _hop in range(MAX_REDIRECTS + 1):
            parts = urlsplit(current)
            if parts.scheme not in ("http", "https"):
                raise _fail(shown, f"redirected to an unsupported scheme {parts.scheme!r}")
            _check_host(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), allow_private, shown)
            try:
                watch = _WATCH.get()
                connect = CONNECT_TIMEOUT if watch is None else max(0.1, min(CONNECT_TIMEOUT, watch.remaining()))
                resp = session.get(current, headers=hdrs, stream=True, allow_redirects=False,
                                   timeout=(connect, READ_TIMEOUT))
            except Refused as exc:
                raise _fail(shown, f"refused: {exc}") from None
            except requests.RequestException as exc:
                raise _Transient(_describe(exc, query)) from None
            if resp.is_redirect:
                target = urljoin(current, resp.headers["Location"])
                resp.close()
                new = urlsplit(target)
                if (new.scheme, new.hostname, new.port) != (parts.scheme, parts.hostname, parts.port):
                    # The caller's headers (tokens, cookies, API keys of any name) are for the first
                    # host only, and a presigned CDN URL rejects them: keep only the protocol's own.
                    hdrs = {k: v for k, v in hdrs.items() if k in _PROTOCOL_HEADERS}
                log.debug("download %s redirected to %s", shown, shown_url(target))
                current = target
                continue
            return body_of(resp, offset)
        raise _fail(shown, f"more than {MAX_REDIRECTS} redirects")

    def body_of(resp: requests.Response, offset: int) -> _Body:
        status = resp.status_code
        validator = resp.headers.get("ETag") or resp.headers.get("Last-Modified")
        if status == 416 and offset:
            resp.close()
            _, total = _parse_content_range(resp.headers.get("Content-Range"))
            if total == offset:  # the partial file is already complete
                return _Body(offset, total, iter(()), lambda: None, validator)
            return open_body(0, None)
        if status in _TRANSIENT_STATUS:
            resp.close()
            raise _Transient(f"HTTP {status}", retries.retry_after(resp.headers.get("Retry-After")))
        if status not in (200, 206):
            resp.close()
            hint = " (a private file needs a token; a presigned link may have expired)" if status in (401, 403) else ""
            raise _fail(shown, f"HTTP {status} {resp.reason or ''}".rstrip() + hint)
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if status == 206:
            start, total = _parse_content_range(resp.headers.get("Content-Range"))
            if start is None:
                resp.close()
                raise _fail(shown, "the server sent a malformed Content-Range")
            if total is None and length is not None:
                total = start + length
        else:
            start, total = 0, length
        return _Body(start, total, stream(resp), resp.close, validator)

    return open_body


def _s3_opener(url: str, shown: str):
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    bucket, _, key = url[len("s3://"):].partition("/")
    if not bucket or not key:
        raise _fail(shown, "an s3:// URL needs a bucket and a key (s3://bucket/path/to/file)")
    endpoint = os.environ.get("S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3") or None
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    config = Config(signature_version="s3v4", s3={"addressing_style": "path"} if endpoint else {},
                    retries={"max_attempts": 3, "mode": "standard"},
                    connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT)
    # A fresh session reads the environment now (boto3's default session caches credentials).
    client = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region, config=config)

    def stream(body) -> Iterator[bytes]:
        try:
            yield from body.iter_chunks(CHUNK_BYTES)
        except (BotoCoreError, Urllib3Error, OSError) as exc:
            raise _Transient(_describe(exc, "")) from None

    def open_body(offset: int, validator: str | None) -> _Body:
        args = {"Bucket": bucket, "Key": key}
        if offset:
            args["Range"] = f"bytes={offset}-"
            if validator:
                args["IfMatch"] = validator
        try:
            resp = client.get_object(**args)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if offset and (status in (412, 416) or code in ("PreconditionFailed", "InvalidRange")):
                return open_body(0, None)  # changed since the partial file, or partial is too long
            if status in _TRANSIENT_STATUS or code in ("SlowDown", "InternalError", "ServiceUnavailable"):
                raise _Transient(f"S3 {code or status}") from None
            raise _fail(shown, f"S3 {code or status}: {error.get('Message', '')}".rstrip(": ")) from None
        except NoCredentialsError:
            raise _fail(shown, "no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)") from None
        except BotoCoreError as exc:
            raise _Transient(_describe(exc, "")) from None
        start, total = _parse_content_range(resp.get("ContentRange"))
        if start is None:
            start, total = 0, resp.get("ContentLength")
        body = resp["Body"]
        return _Body(start, total, stream(body), body.close, resp.get("ETag"))

    return open_body


_REPO_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


def _hf_resolve(url: str, headers: dict[str, str], shown: str) -> tuple[str, dict[str, str]]:
    """hf:// URL -> (https resolve URL on HF_ENDPOINT, headers with the token)."""
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    segs = unquote(url[len("hf://"):]).split("/")
    if any(seg in (".", "..") or "\\" in seg for seg in segs):
        raise _fail(shown, "an hf:// URL may not hold '.' or '..' segments or backslashes")
    repo_type = {"datasets": "dataset", "spaces": "space", "models": None}.get(segs[0], "model")
    if segs[0] in ("datasets", "spaces", "models"):
        segs = segs[1:]
    if len(segs) < 3 or not all(segs[:2]) or not segs[-1]:
        raise _fail(shown, "an hf:// URL is hf://<owner>/<name>/<path in repo>[@revision]")
    owner, name, path = segs[0], segs[1], "/".join(segs[2:])
    revision = None
    if "@" in name:
        name, revision = name.split("@", 1)
    elif "@" in path:
        path, revision = path.rsplit("@", 1)
    if not (_REPO_PART.fullmatch(owner) and _REPO_PART.fullmatch(name)) or not path:
        raise _fail(shown, "an hf:// URL names a repo as <owner>/<name> (letters, digits, '-', '_', '.')")
    endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    resolved = hf_hub_url(f"{owner}/{name}", path, repo_type=None if repo_type == "model" else repo_type,
                          revision=revision or None, endpoint=endpoint)
    own_auth = any(k.lower() == "authorization" for k in headers)
    hf_headers = build_hf_headers(token=False if own_auth else (os.environ.get("HF_TOKEN") or None))
    register_secret(hf_headers.get("authorization", "").removeprefix("Bearer "))
    return resolved, {**hf_headers, **headers}


class _Partial:
    """`<dest>.partial` plus the sidecar saying which URL and version its bytes belong to."""

    def __init__(self, dest: Path, identity: str):
        self.path = dest.with_name(dest.name + ".partial")
        self.meta = dest.with_name(dest.name + ".partial.json")
        self.identity = identity
        self.validator: str | None = None
        self.hasher = hashlib.sha256()
        self.size = 0
        if self.path.exists():
            try:
                meta = json.loads(self.meta.read_text())
            except (OSError, ValueError):
                meta = {}
            if meta.get("identity") == identity:
                self.validator = meta.get("validator")
                with open(self.path, "rb") as f:
                    while block := f.read(CHUNK_BYTES):
                        self.hasher.update(block)
                        self.size += len(block)
            else:
                self.discard()

    def restart(self) -> None:
        self.hasher, self.size, self.validator = hashlib.sha256(), 0, None

    def remember(self, validator: str | None) -> None:
        if validator != self.validator:
            self.validator = validator
            self.meta.write_text(json.dumps({"identity": self.identity, "validator": validator}))

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)
        self.restart()


def _identity(url: str) -> str:
    """What a partial file belongs to: the URL without its (often re-signed) query string."""
    parts = urlsplit(url)
    return hashlib.sha256(f"{parts.scheme}://{parts.netloc}{parts.path}".encode()).hexdigest()


def _receive(open_body, part: _Partial, shown: str, max_bytes: int,
             progress: Callable[[int, int | None], None] | None, watch: _Watch) -> None:
    budget = retries.Budget(RETRIES, progress=PROGRESS_BYTES)
    while True:
        watch.check(shown, part.size)
        before = part.size
        try:
            body = open_body(part.size, part.validator if part.size else None)
            try:
                if body.start != part.size:
                    if body.start != 0:
                        raise _fail(shown, f"asked for the bytes from {part.size} on, the server sent bytes "
                                           f"from {body.start} on (a misaligned range reply)")
                    part.restart()  # the server sent the whole file again
                part.remember(body.validator)
                if body.total is not None and body.total > max_bytes:
                    raise _fail(shown, f"the file is {body.total} bytes, over the limit of {max_bytes} bytes")
                if progress:
                    progress(part.size, body.total)
                with open(part.path, "r+b" if part.path.exists() else "wb") as f:
                    f.seek(part.size)
                    f.truncate()
                    for chunk in body.chunks:
                        watch.check(shown, part.size)
                        if part.size + len(chunk) > max_bytes:
                            raise _fail(shown, f"the download exceeds the limit of {max_bytes} bytes")
                        f.write(chunk)
                        part.hasher.update(chunk)
                        part.size += len(chunk)
                        if progress:
                            progress(part.size, body.total)
                    f.flush()
                    os.fsync(f.fileno())
                watch.check(shown, part.size)  # a body without a length "ends" when the watcher cut it
                if body.total is not None and part.size < body.total:
                    raise _Transient(f"connection closed after {part.size} of {body.total} bytes")
                return
            finally:
                body.close()
        except _Transient as exc:
            watch.check(shown, part.size)  # the watcher's shutdown looks like a dropped connection
            if not budget.failed(part.size - before):
                raise _GaveUp(f"{exc.reason} (gave up after {RETRIES} retries; "
                              f"{part.size} bytes kept for a later resume)") from None
            delay = retries.delay(budget.failures, base=BACKOFF_SECONDS, cap=MAX_BACKOFF_SECONDS,
                                  server_wait=exc.retry_after)
            delay = max(0.0, min(delay, watch.remaining()))
            log.warning("download %s: %s; retry %d/%d in %.1fs (resuming at byte %d)",
                        shown, exc.reason, budget.failures, RETRIES, delay, part.size)
            watch.stop.wait(delay)


def download(url: str, dest: str | os.PathLike, *, max_bytes: int, sha256: str | None = None,
             allow_private: bool = False, headers: dict[str, str] | None = None,
             progress: Callable[[int, int | None], None] | None = None,
             stop: threading.Event | None = None, timeout_s: float | None = None) -> Path:
    """Download `url` to `dest` (atomically) and return `dest`; see the module docstring.

    `timeout_s` is the overall deadline (default: env `DOWNLOAD_TIMEOUT_S`, else 2 hours)."""
    shown = shown_url(url) if url.startswith(("http://", "https://")) else redact_text(url.split("?", 1)[0])
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        raise _fail(shown, f"unsupported URL scheme {scheme!r} (allowed: {', '.join(SCHEMES)})")
    if not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ValueError("max_bytes must be a positive number of bytes")
    expected = sha256.lower().strip() if sha256 else None
    headers = dict(headers or {})
    for key, value in headers.items():
        if is_sensitive_key(key):
            register_secret(value)
    if scheme in ("http", "https"):
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise _fail(shown, "malformed URL") from None
        register_secret(parts.password)
    allow = private_allowed(allow_private)

    if scheme == "s3":
        open_body = _s3_opener(url, shown)
    else:
        target = url
        if scheme == "hf":
            target, headers = _hf_resolve(url, headers, shown)
        open_body = _http_opener(target, headers, allow, shown)

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _Partial(dest, _identity(url))
    try:
        with _Watch(stop or threading.Event(), timeout_s or download_timeout()) as watch:
            _receive(open_body, part, shown, max_bytes, progress, watch)
    except _GaveUp as exc:
        raise _fail(shown, str(exc)) from None
    except JobError:
        part.discard()
        raise
    if expected and part.hasher.hexdigest() != expected:
        got = part.hasher.hexdigest()
        part.discard()
        raise _fail(shown, f"sha256 mismatch: expected {expected}, got {got} (the download was deleted)")
    os.replace(part.path, dest)
    part.meta.unlink(missing_ok=True)
    log.info("downloaded %s (%d bytes) -> %s", shown, part.size, dest)
    return dest
