"""A litterbox.catbox.moe stand-in following its documented behaviour (https://litterbox.catbox.moe/tools.php).

`POST /resources/internals/api.php` multipart (`reqtype=fileupload`, `time`, `fileToUpload`)
-> 200 with the plain-text link `{base}/files/<key>.<ext>`, which `GET` serves. Like the real
service it answers mistakes with text and status 200 (`reqtype` missing, `time` outside
1h/12h/24h/72h), 413 over the size limit, and drops clients that send no User-Agent.

`HostState.mode` switches failures on (shared with the transfer.sh stand-in): "ok", "500",
"hang" (no answer until past the client's read timeout), "text" (200 with a non-link body, as
Cloudflare challenge pages arrive); `busy` answers that many requests 429 with a Retry-After first.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler

from tests.fakes.threaded_http import BackgroundServer, read_body, reply

EXPIRIES = ("1h", "12h", "24h", "72h")


@dataclass
class HostState:
    mode: str = "ok"
    max_bytes: int = 10 * 2**20
    hang_seconds: float = 5.0
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[dict] = field(default_factory=list)
    base_url: str = ""
    busy: int = 0  # the next `busy` requests are answered 429 with `Retry-After: retry_after`
    retry_after: str = "1"


def _answer_failure(handler: BaseHTTPRequestHandler, state: HostState) -> bool:
    """Answer as the failure `state.mode` asks for (or 429 while `state.busy`); False in mode "ok"."""
    if state.busy:
        state.busy -= 1
        reply(handler, 429, "slow down", headers={"Retry-After": state.retry_after})
    elif state.mode == "500":
        reply(handler, 500, "<html>Internal Server Error</html>", "text/html")
    elif state.mode == "hang":
        time.sleep(state.hang_seconds)
        reply(handler, 504, "gateway timeout")
    elif state.mode == "text":
        reply(handler, 200, "<html><body>Checking your browser before accessing...</body></html>", "text/html")
    else:
        return False
    return True


def _multipart(handler: BaseHTTPRequestHandler, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    ctype = handler.headers.get("Content-Type", "")
    msg = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {ctype}\r\n\r\n".encode() + body)
    parts = {}
    for part in msg.iter_parts():
        parts[part.get_param("name", header="content-disposition")] = (part.get_filename(),
                                                                        part.get_payload(decode=True))
    return parts


class HostHandler(BaseHTTPRequestHandler):
    """What the litterbox and transfer.sh stand-ins share: every upload recorded, failures as
    `state.mode` asks, stored files served back."""

    state: HostState

    def log_message(self, *args):
        pass

    def received(self) -> bytes | None:
        """The request's body, recorded; None when a failure was answered instead."""
        body = read_body(self)
        self.state.requests.append({"path": self.path, "headers": dict(self.headers), "size": len(body)})
        return None if _answer_failure(self, self.state) else body

    def send_file(self, key: str, missing: str) -> None:
        if key in self.state.files:
            return reply(self, 200, self.state.files[key], "application/octet-stream")
        reply(self, 404, missing)


def serve_host(handler: type[HostHandler], state: HostState | None) -> BackgroundServer:
    state = state or HostState()
    server = BackgroundServer(handler, state)
    state.base_url = server.url
    return server


class _Litterbox(HostHandler):
    def do_POST(self):
        st = self.state
        body = self.received()
        if body is None:
            return
        if self.path != "/resources/internals/api.php":
            return reply(self, 404, "not found")
        if not self.headers.get("User-Agent"):
            self.close_connection = True  # catbox drops clients without a User-Agent
            return
        parts = _multipart(self, body)
        if parts.get("reqtype", (None, b""))[1] != b"fileupload":
            return reply(self, 200, "No request type given.")
        if parts.get("time", (None, b""))[1].decode() not in EXPIRIES:
            return reply(self, 200, "No expire time specified.")
        name, data = parts.get("fileToUpload", (None, b""))
        if len(data) > st.max_bytes:
            return reply(self, 413, "File too large.")
        key = secrets.token_hex(3) + "." + (name or "bin").rsplit(".", 1)[-1]
        st.files[key] = data
        reply(self, 200, f"{st.base_url}/files/{key}")

    def do_GET(self):
        self.send_file(self.path.removeprefix("/files/"), "not found")


def serve(state: HostState | None = None) -> BackgroundServer:
    return serve_host(_Litterbox, state)
