"""A small HTTP file server on 127.0.0.1 that misbehaves on request, for download tests.

Each served path is a `Route`: its bytes plus how the server treats it (honour Range or not,
send Content-Length or not, drop the connection part-way through the body, answer with error
statuses first, redirect elsewhere, stall). Every request is recorded with its headers so a
test can check what the client sent (for example that a retry carried `Range`).
"""

from __future__ import annotations

import hashlib
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from requests.structures import CaseInsensitiveDict

from tests.fakes.threaded_http import LocalService


@dataclass
class Route:
    data: bytes = b""
    ranges: bool = True  # answer `Range: bytes=N-` with 206
    content_length: bool = True  # without it the body ends when the connection closes
    drop_after: int | None = None  # close the connection after this many body bytes...
    drops: int = 1  # ...on this many responses
    statuses: list[int] = field(default_factory=list)  # answered (in order) before the real body
    retry_after: str | None = None  # Retry-After header sent with those statuses
    redirect: str | None = None  # Location of a 302
    stall: float = 0.0  # seconds to wait after the headers, before the body...
    stalls: int = 1  # ...on this many responses
    etag: str | None = None
    drip: float = 0.0  # seconds between single body bytes (a server that trickles)
    misalign: int = 0  # a 206 reply starts this many bytes after the offset asked for (and says so)

    def __post_init__(self):
        if self.etag is None:
            self.etag = '"' + hashlib.sha256(self.data).hexdigest()[:16] + '"'


@dataclass
class Seen:
    method: str
    path: str
    headers: CaseInsensitiveDict


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # clients hang up on purpose in these tests
            super().handle_error(request, client_address)


class FileServer(LocalService):
    """`with FileServer() as srv: srv.add("/a.bin", Route(data)); srv.url("/a.bin")`."""

    def __init__(self):
        self.routes: dict[str, Route] = {}
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        self.bind()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        return _handler_for(self)

    def _server(self, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
        return _QuietServer(("127.0.0.1", 0), handler)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def add(self, path: str, route: Route) -> Route:
        self.routes[path] = route
        return route

    def seen(self, path: str) -> list[Seen]:
        with self._lock:
            return [r for r in self.requests if urlsplit(r.path).path == path]


def _handler_for(server: FileServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output quiet
            pass

        def do_GET(self):
            with server._lock:
                server.requests.append(Seen("GET", self.path, CaseInsensitiveDict(self.headers.items())))
            route = server.routes.get(urlsplit(self.path).path)
            if route is None:
                return self._plain(404, b"not found")
            if route.statuses:
                status = route.statuses.pop(0)
                extra = {"Retry-After": route.retry_after} if route.retry_after else {}
                return self._plain(status, b"try again later", extra)
            if route.redirect:
                return self._plain(302, b"", {"Location": route.redirect})
            self._serve(route)

        def _plain(self, status: int, body: bytes, headers: dict[str, str] | None = None):
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _serve(self, route: Route):
            data, start = route.data, 0
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if_range = self.headers.get("If-Range")
            use_range = route.ranges and match and (if_range is None or if_range == route.etag)
            if use_range:
                start = int(match.group(1)) + route.misalign
                if start >= len(data):
                    return self._plain(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            if route.ranges:
                self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", route.etag)
            body = data[start:]
            if route.content_length:
                self.send_header("Content-Length", str(len(body)))
            else:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if route.stall and route.stalls > 0:
                route.stalls -= 1
                time.sleep(route.stall)
            if route.drop_after is not None and route.drops > 0:
                route.drops -= 1
                self.wfile.write(body[: route.drop_after])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            if route.drip:
                for i in range(len(body)):
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                    time.sleep(route.drip)
                return
            self.wfile.write(body)

    return Handler
