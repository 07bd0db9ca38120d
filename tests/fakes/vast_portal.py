"""A stand-in for the token proxy (Caddy) that vast's base images put in front of an app port.

Behaviour, from `vast-ai/base-image` at a7552d18d628c30f8271c719e523f213051a3961:
- every proxied port wants credentials (README.md:172-188 "Authentication"); without them, or with
  wrong ones, the answer is 401 (ROOT/opt/instance-tools/tests/base/26-caddy-auth.sh:120-123, 176-194);
- accepted: `Authorization: Bearer <OPEN_BUTTON_TOKEN or WEB_PASSWORD>`, Basic `vastai:<token>`,
  `?token=<token>` (answered 302 with a `<VAST_CONTAINERLABEL>_auth_token` cookie), and that cookie
  (26-caddy-auth.sh:124-175);
- `ENABLE_HTTPS=true` serves it over TLS with the instance's self-signed certificate (README.md:160-170);
  a plain-HTTP request to that port gets Go's `400 Client sent an HTTP request to an HTTPS server.`
  (Caddy is a Go server).
Authorised requests are forwarded to `target` (the app on its internal port).
"""

from __future__ import annotations

import base64
import socket
import ssl
import tempfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import requests

from tests.fakes.threaded_http import LocalService, reply
from tests.tls_helpers import self_signed_cert

HTTPS_REFUSAL = b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"


class OpenButtonProxy(LocalService):
    def __init__(self, target: str, *, token: str, https: bool = False, label: str = "C.12345"):
        self.target = target.rstrip("/")
        self.token = token
        self.cookie = f"{label}_auth_token"
        self.https = https
        self.refused = 0
        self.clear_credentials = 0  # plain-HTTP requests to the TLS port that carried credentials
        self._tmp = tempfile.TemporaryDirectory()
        self._ctx = None
        if https:
            self._ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._ctx.load_cert_chain(*self_signed_cert(Path(self._tmp.name), common_name=label))

    def _authorized(self, h: BaseHTTPRequestHandler) -> bool:
        auth = h.headers.get("Authorization", "")
        if auth == f"Bearer {self.token}":
            return True
        if auth.startswith("Basic "):
            try:
                return base64.b64decode(auth[6:]).decode() == f"vastai:{self.token}"
            except ValueError:
                return False
        return f"{self.cookie}={self.token}" in h.headers.get("Cookie", "")

    def _dispatch(self, h: BaseHTTPRequestHandler, method: str) -> None:
        if getattr(h.request, "plain_on_tls", False):
            self.clear_credentials += bool(h.headers.get("Authorization") or "token=" in h.path)
            h.wfile.write(HTTPS_REFUSAL)
            h.close_connection = True
            return
        parts = urlsplit(h.path)
        if parse_qs(parts.query).get("token") == [self.token]:
            return reply(h, 302, "", headers={"Location": parts.path or "/",
                                              "Set-Cookie": f"{self.cookie}={self.token}; Path=/; HttpOnly"})
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        if not self._authorized(h):
            self.refused += 1
            return reply(h, 401, "Unauthorized", headers={"WWW-Authenticate": 'Basic realm="restricted"'})
        upstream = requests.request(method, self.target + h.path, data=body, timeout=60,
                                    headers={"Content-Type": h.headers.get("Content-Type", "application/json")})
        reply(h, upstream.status_code, upstream.content, upstream.headers.get("Content-Type", "text/plain"))

    def _server(self, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
        proxy = self

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self):
                sock, addr = super().get_request()
                if proxy._ctx is None:
                    return sock, addr
                sock.settimeout(10)
                first = sock.recv(1, socket.MSG_PEEK)
                if first == b"\x16":  # a TLS ClientHello
                    return proxy._ctx.wrap_socket(sock, server_side=True), addr
                wrapped = _PlainOnTls(sock)
                return wrapped, addr

            def handle_error(self, request, client_address):  # clients hang up on a bad certificate
                pass

        return Server(("127.0.0.1", 0), handler)

    def close(self) -> None:
        super().close()
        self._tmp.cleanup()


class _PlainOnTls(socket.socket):
    """A plain connection to the TLS port: the handler answers it with Go's 400."""

    plain_on_tls = True

    def __init__(self, sock: socket.socket):
        super().__init__(sock.family, sock.type, sock.proto, fileno=sock.detach())
