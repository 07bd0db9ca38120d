"""Local servers for tests on 127.0.0.1: `LocalService` (the base of the stand-ins), `free_port()`
(`common.processes.free_port`, here for the tests) for servers started as processes, and helpers to
read and answer requests."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from common.processes import free_port

__all__ = ["BackgroundServer", "LocalService", "free_port", "read_body", "reply", "reply_json", "wait_port"]


def wait_port(port: int, timeout: float = 20) -> bool:
    """Whether something listens on 127.0.0.1:`port` within `timeout` seconds (a server started as a process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # clients time out and hang up on purpose in tests
        pass


def read_body(handler: BaseHTTPRequestHandler) -> bytes:
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


def reply_json(handler: BaseHTTPRequestHandler, status: int, body: object,
               headers: dict[str, str] | None = None) -> None:
    reply(handler, status, json.dumps(body), "application/json", headers)


def reply(handler: BaseHTTPRequestHandler, status: int, body: bytes | str = b"",
          content_type: str = "text/plain", headers: dict[str, str] | None = None) -> None:
    data = body.encode() if isinstance(body, str) else body
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(data)))
    for k, v in (headers or {}).items():
        handler.send_header(k, v)
    handler.end_headers()
    handler.wfile.write(data)


class LocalService:
    """The base of every stand-in server: 127.0.0.1, a free port, a daemon thread.

    Subclasses route every request through `_dispatch(handler, method)` (HTTP/1.1 keep-alive), or
    give their own request handler class (`_handler_class`) or server (`_server`). `bind()` takes
    the port (so `origin` is known before serving), `start()` binds and serves, `close()` stops;
    usable as a context manager.
    """

    methods: tuple[str, ...] = ("GET", "POST")
    _httpd: ThreadingHTTPServer | None = None
    _port: int | None = None

    def _dispatch(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        raise NotImplementedError

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

        for method in self.methods:
            setattr(Handler, f"do_{method}", lambda h, m=method: service._dispatch(h, m))
        return Handler

    def _server(self, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
        return _Server(("127.0.0.1", 0), handler)

    def bind(self):
        if self._httpd is None:
            self._httpd = self._server(self._handler_class())
            self._port = self._httpd.server_address[1]
        return self

    def start(self):
        self.bind()
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    @property
    def port(self) -> int:
        """The port taken by `bind()` (still known after `close()`)."""
        return self._port

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


class BackgroundServer(LocalService):
    """A `BaseHTTPRequestHandler` class served with its own `state` (the class attribute the
    handler reads); bound at once, so `url` is known before `with` starts serving."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], state: object):
        self._bound = type(handler.__name__, (handler,), {"state": state})  # one state per server
        self.url = self.bind().origin

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        return self._bound
