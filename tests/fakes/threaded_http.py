"""Run a `BaseHTTPRequestHandler` class on 127.0.0.1 in a background thread."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # clients time out and hang up on purpose in tests
        pass


class BackgroundServer:
    def __init__(self, handler: type[BaseHTTPRequestHandler], state: object):
        bound = type(handler.__name__, (handler,), {"state": state})  # one state per server
        self.httpd = _Server(("127.0.0.1", 0), bound)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


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
    """Base of the stand-ins that route every request through one `_dispatch(handler, method)`.

    `start()` serves on a free port of 127.0.0.1 in a daemon thread (HTTP/1.1 keep-alive);
    `close()` stops it; `origin` is `http://127.0.0.1:<port>`. Usable as a context manager.
    """

    methods: tuple[str, ...] = ("GET", "POST")
    _httpd: ThreadingHTTPServer | None = None

    def _dispatch(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        raise NotImplementedError

    def start(self):
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

        for method in self.methods:
            setattr(Handler, f"do_{method}", lambda h, m=method: service._dispatch(h, m))
        self._httpd = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    @property
    def origin(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
