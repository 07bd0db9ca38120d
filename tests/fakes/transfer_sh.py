"""A self-hosted transfer.sh stand-in following its documented behaviour (dutchcoders/transfer.sh README.md,
https://github.com/dutchcoders/transfer.sh#usage).

`PUT /<name>` (also `/put/<name>`, `/upload/<name>`) with `Max-Days` -> 200 text link
`{base}/<token>/<name>` and header `X-Url-Delete`; `GET /<token>/<name>` and
`/get/<token>/<name>` serve the file. Errors as text: 400 for an empty body or a Max-Days
that is not a number, 413 over `max_bytes`. Failure modes as in the litterbox stand-in.
It also serves as a presigned-PUT target in tests (any query string is ignored).
"""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

from tests.fakes.litterbox import HostHandler, HostState, serve_host
from tests.fakes.threaded_http import BackgroundServer, reply

__all__ = ["HostState", "serve"]


class _TransferSh(HostHandler):
    def do_PUT(self):
        st = self.state
        body = self.received()
        if body is None:
            return
        name = urlsplit(self.path).path.strip("/").split("/")[-1]
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
        self.send_file(self.path.strip("/").removeprefix("get/"), "Not Found")


def serve(state: HostState | None = None) -> BackgroundServer:
    return serve_host(_TransferSh, state)
