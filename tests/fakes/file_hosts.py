"""Stand-ins for litterbox and a self-hosted transfer.sh, following their documented behaviour.

litterbox: `POST /resources/internals/api.php` multipart (`reqtype=fileupload`, `time`,
`fileToUpload`) -> 200 with the plain-text link; `time` outside 1h/12h/24h/72h and files
over the limit are refused with text, as the real service does.
transfer.sh: `PUT /<name>` (`Max-Days`) -> 200 text link `{base}/{token}/{name}` and
`X-Url-Delete`; `GET /<token>/<name>` serves the file; 400 for an empty body or bad Max-Days.

`mode` switches failures on: "ok", "500", "hang" (no answer past the client's timeout),
"text" (200 with a non-link body, as Cloudflare pages and catbox errors arrive).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler

from tests.fakes.threaded_http import BackgroundServer, read_body, reply


@dataclass
class HostState:
    mode: str = "ok"
    max_bytes: int = 10 * 2**20
    hang_seconds: float = 5.0
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[dict] = field(default_factory=list)
    base_url: str = ""


def _multipart(handler: BaseHTTPRequestHandler, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    ctype = handler.headers.get("Content-Type", "")
    msg = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {ctype}\r\n\r\n".encode() + body)
    parts = {}
    for part in msg.iter_parts():
        parts[part.get_param("name", header="content-disposition")] = (part.get_filename(),
                                                                        part.get_payload(decode=True))
    return parts


def _failure(handler: BaseHTTPRequestHandler, state: HostState) -> bool:
    if state.mode == "500":
        reply(handler, 500, "<html>Internal Server Error</html>", "text/html")
    elif state.mode == "hang":
        time.sleep(state.hang_seconds)
        reply(handler, 504, "gateway timeout")
    elif state.mode == "text":
        reply(handler, 200, "<html><body>Checking your browser before accessing...</body></html>", "text/html")
    else:
        return False
    return True


class _Litterbox(BaseHTTPRequestHandler):
    state: HostState

    def log_message(self, *args):
        pass

    def do_POST(self):
        st = self.state
        body = read_body(self)
        st.requests.append({"path": self.path, "headers": dict(self.headers), "size": len(body)})
        if _failure(self, st):
            return
        if self.path != "/resources/internals/api.php":
            return reply(self, 404, "not found")
        if not self.headers.get("User-Agent"):
            self.close_connection = True  # catbox drops clients without a User-Agent
            return
        parts = _multipart(self, body)
        if parts.get("reqtype", (None, b""))[1] != b"fileupload":
            return reply(self, 200, "No request type given.")
        if parts.get("time", (None, b""))[1].decode() not in ("1h", "12h", "24h", "72h"):
            return reply(self, 200, "No expire time specified.")
        name, data = parts.get("fileToUpload", (None, b""))
        if len(data) > st.max_bytes:
            return reply(self, 413, "File too large.")
        key = secrets.token_hex(3) + "." + (name or "bin").rsplit(".", 1)[-1]
        st.files[key] = data
        reply(self, 200, f"{st.base_url}/files/{key}")

    def do_GET(self):
        key = self.path.removeprefix("/files/")
        if key in self.state.files:
            return reply(self, 200, self.state.files[key], "application/octet-stream")
        reply(self, 404, "not found")


class _TransferSh(BaseHTTPRequestHandler):
    state: HostState

    def log_message(self, *args):
        pass

    def do_PUT(self):
        st = self.state
        body = read_body(self)
        st.requests.append({"path": self.path, "headers": dict(self.headers), "size": len(body)})
        if _failure(self, st):
            return
        name = self.path.strip("/").split("/")[-1]
        if not body:
            return reply(self, 400, "Could not upload empty file")
        days = self.headers.get("Max-Days")
        if days is not None and not days.isdigit():
            return reply(self, 400, "Max-Days must be a number")
        if len(body) > st.max_bytes:
            return reply(self, 413, "Entity too large")
        token = secrets.token_hex(4)
        st.files[f"{token}/{name}"] = body
        url = f"{st.base_url}/{token}/{name}"
        reply(self, 200, url, headers={"X-Url-Delete": f"{url}/{secrets.token_hex(8)}"})

    def do_GET(self):
        key = self.path.strip("/").removeprefix("get/")
        if key in self.state.files:
            return reply(self, 200, self.state.files[key], "application/octet-stream")
        reply(self, 404, "Not Found")


def litterbox(state: HostState | None = None) -> BackgroundServer:
    state = state or HostState()
    server = BackgroundServer(_Litterbox, state)
    state.base_url = server.url
    return server


def transfer_sh(state: HostState | None = None) -> BackgroundServer:
    state = state or HostState()
    server = BackgroundServer(_TransferSh, state)
    state.base_url = server.url
    return server
