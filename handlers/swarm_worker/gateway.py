"""The authenticating reverse proxy on the public port in front of SwarmUI's loopback port.

- A request needs a valid worker token: `Authorization: Bearer <token>`, or the path prefix
  `/t/<token>` (the legacy extension appends `/API/...` to the `public_url` it was given, so
  the token travels inside that URL). Otherwise 401 `worker_unauthorized`.
- Until SwarmUI is ready: 503 `worker_starting`.
- Bodies are buffered and forwarded with an exact Content-Length (SwarmUI refuses chunked
  bodies); client `X-Forwarded-*`/`Forwarded` headers are dropped; the client's credentials
  are replaced by the gateway's own secret, which SwarmUI requires on every request (its
  loopback exemption is switched off, see swarm_files.settings_fds).
- HTTP and WebSocket. Responses are streamed, so large `View/` downloads never sit in memory.
- Compression: SwarmUI compresses JSON whenever the request's `Accept-Encoding` allows it (ASP.NET
  response compression). The client's own `Accept-Encoding` is forwarded, `identity` when it sent
  none (.NET clients such as both HartsyAI extensions do not decompress), so a body only arrives
  compressed to a client that asked for it, and always with its `Content-Encoding`.
- On the legacy `/t/<token>` path, `GenerateText2Image` answers have their `images` rewritten
  to raw base64, which is what the legacy extension decodes (asked for uncompressed).
- Tokens have kinds: `env` (a fixed token from the environment), `lease` (dies with its lease) and
  `legacy` (the per-worker `/t/` token, refused while a lease holds the worker).
- A refused request costs a token comparison and a counter: refusals are logged as a count at
  most once a minute, never with the request's path (which a stranger chooses).
- `TriggerRefresh` first brings the per-worker model tree up to date with the volume.
- A browser opening `<base>/t/<token>` is redirected to `/` with the token in an HttpOnly
  cookie, so SwarmUI's own web UI (which loads `/css/...`, `/API/...`) works behind the gateway.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import WSMsgType, web

from common.redaction import register_secret
from common.swarmui import decode_data_url, is_data_url, view_path
from handlers.swarm_worker.lease_sessions import SessionLedger, session_of

log = logging.getLogger("swarm.gateway")

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "host", "content-length", "authorization", "accept-encoding",
              "forwarded", "x-real-ip", "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
              "sec-websocket-accept"}
RESPONSE_DROP = {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade", "server", "date"}
COOKIE = "swarm_worker_token"
_TOKEN_PATH = re.compile(r"^/t/([^/?#]+)(/[^?#]*)?$")
GENERATION_ROUTES = {"/api/generatetext2image", "/api/generatetext2imagews"}
CHUNK = 256 * 1024


REFUSAL_LOG_SECONDS = 60.0
_UNAUTHORIZED = json.dumps({"error": "A valid worker token is required.", "error_id": "worker_unauthorized"}).encode()


def _error(status: int, error_id: str, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message, "error_id": error_id}, status=status, headers=headers or None)


def _unauthorized() -> web.Response:
    return web.Response(status=401, body=_UNAUTHORIZED, content_type="application/json",
                        headers={"WWW-Authenticate": 'Bearer realm="swarm-worker"'})


class Gateway:
    """Token-gated proxy; tokens are granted and revoked by the worker runtime."""

    def __init__(self, *, host: str, port: int, upstream: str, upstream_secret: Callable[[], str],
                 is_ready: Callable[[], bool], before_refresh: Callable[[], Awaitable[object]] | None = None,
                 ssl_context: ssl.SSLContext | None = None):
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.upstream = upstream.rstrip("/")
        self._upstream_secret = upstream_secret
        self._is_ready = is_ready
        self._before_refresh = before_refresh
        self._tokens: dict[str, str] = {}
        self._suspended: set[str] = set()  # token kinds refused for now (`legacy` during a lease)
        self.refused = 0  # requests refused for want of a valid token, since the last log line
        self._refusals_logged_at = time.monotonic()
        self._sockets: dict[str, set[web.WebSocketResponse]] = {}
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.generations_in_flight = 0
        self.last_generation_at: float | None = None
        self.sessions = SessionLedger()  # the SwarmUI sessions each token generated with

    # -- tokens ---------------------------------------------------------------------------------------

    def allow(self, token: str, kind: str) -> None:
        register_secret(token)
        self._tokens[token] = kind

    async def revoke(self, token: str) -> int:
        """Revoke a token and close the WebSockets opened with it; returns how many were closed."""
        self._tokens.pop(token, None)
        sockets = self._sockets.pop(token, set())
        for ws in list(sockets):
            await ws.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION, message=b"lease ended")
        return len(sockets)

    async def suspend(self, kind: str) -> int:
        """Refuse every token of `kind` (and close its WebSockets) until `resume(kind)`."""
        self._suspended.add(kind)
        closed = 0
        for token, token_kind in list(self._tokens.items()):
            if token_kind == kind:
                for ws in list(self._sockets.pop(token, set())):
                    await ws.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION, message=b"worker leased")
                    closed += 1
        return closed

    def resume(self, kind: str) -> None:
        self._suspended.discard(kind)

    def _match(self, token: str | None) -> str | None:
        if not token:
            return None
        given = token.encode()
        for known, kind in list(self._tokens.items()):
            if hmac.compare_digest(known.encode(), given):
                return None if kind in self._suspended else known
        return None

    def _refuse(self) -> web.Response:
        self.refused += 1
        now = time.monotonic()
        if now - self._refusals_logged_at >= REFUSAL_LOG_SECONDS:
            log.info("refused %d request(s) without a valid token in the last %.0f s", self.refused,
                     now - self._refusals_logged_at)
            self.refused = 0
            self._refusals_logged_at = now
        return _unauthorized()

    def open_websockets(self) -> int:
        return sum(len(s) for s in self._sockets.values())

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=200 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        await site.start()
        self._session = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None))
        log.info("gateway listening on %s://%s:%d -> %s", "https" if self.ssl_context else "http", self.host,
                 self.port, self.upstream)

    async def stop(self) -> None:
        for token in list(self._sockets):
            await self.revoke(token)
        if self._runner:
            await self._runner.cleanup()
        if self._session:
            await self._session.close()

    # -- requests -------------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw_path, _, query = request.raw_path.partition("?")
        legacy = False
        m = _TOKEN_PATH.match(raw_path)
        if m:
            token, rest, legacy = m.group(1), m.group(2) or "/", True
        else:
            auth = request.headers.get("Authorization", "")
            token = auth[7:].strip() if auth[:7].lower() == "bearer " else request.cookies.get(COOKIE)
            rest = raw_path
        known = self._match(token)
        if known is None:
            return self._refuse()
        if legacy and rest == "/" and request.method == "GET":
            return self._browser_entry(request, known)
        if not self._is_ready():
            return _error(503, "worker_starting", "SwarmUI is starting; retry shortly.", **{"Retry-After": "5"})
        target = f"{self.upstream}{rest}" + (f"?{query}" if query else "")
        route = rest.lower().rstrip("/")
        if route == "/api/triggerrefresh" and self._before_refresh is not None:
            await self._before_refresh()  # new files on the volume join SwarmUI's model tree first
        is_generation = route in GENERATION_ROUTES
        if is_generation:
            self.generations_in_flight += 1
        try:
            lease = self._tokens.get(known) == "lease"  # its generations' sessions end with it
            if request.headers.get("Upgrade", "").lower() == "websocket":
                return await self._proxy_ws(request, target, known, note_session=is_generation and lease)
            if is_generation and lease:
                self.sessions.note(known, session_of(await request.read(), request.headers))
            return await self._proxy_http(request, target, rewrite_images=legacy and route == "/api/generatetext2image")
        finally:
            if is_generation:
                self.generations_in_flight -= 1
                self.last_generation_at = time.monotonic()

    def _unreachable(self) -> web.Response:
        if not self._is_ready():  # it went down under this request: it is being restarted
            return _error(503, "worker_starting", "SwarmUI is restarting; retry shortly.", **{"Retry-After": "5"})
        return _error(502, "swarmui_unreachable", "SwarmUI did not answer.")

    @staticmethod
    def _browser_entry(request: web.Request, token: str) -> web.Response:
        response = web.HTTPFound("/")
        secure = request.headers.get("X-Forwarded-Proto", request.scheme) == "https"
        response.set_cookie(COOKIE, token, httponly=True, samesite="Lax", secure=secure, path="/")
        return response

    def _upstream_headers(self, request: web.Request, *, identity: bool = False) -> dict[str, str]:
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in HOP_BY_HOP and not k.lower().startswith("x-forwarded-")}
        headers["Authorization"] = f"Bearer {self._upstream_secret()}"
        # Without an explicit value aiohttp would ask for gzip/br, and SwarmUI would compress for a client
        # that never asked (and, on the legacy path, for a body the rewrite has to parse).
        asked = request.headers.get("Accept-Encoding", "").strip()
        headers["Accept-Encoding"] = asked if asked and not identity else "identity"
        cookie = headers.pop("Cookie", None) or headers.pop("cookie", None)
        if cookie:
            kept = [c for c in cookie.split(";") if c.strip() and c.strip().split("=", 1)[0] != COOKIE]
            if kept:
                headers["Cookie"] = ";".join(kept).strip()
        return headers

    async def _proxy_http(self, request: web.Request, target: str, *, rewrite_images: bool) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        headers = self._upstream_headers(request, identity=rewrite_images)
        try:
            upstream = await self._session.request(request.method, target, data=body if body else None,
                                                   headers=headers, allow_redirects=False)
        except aiohttp.ClientError as exc:
            log.warning("upstream unreachable: %s", exc)
            return self._unreachable()
        async with upstream:
            if rewrite_images and upstream.status == 200:
                return await self._rewrite_images(upstream)
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for k, v in upstream.headers.items():
                if k.lower() not in RESPONSE_DROP:
                    response.headers.add(k, v)
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_chunked(CHUNK):
                    await response.write(chunk)
            except (aiohttp.ClientError, ConnectionResetError) as exc:
                log.warning("stream from SwarmUI broke: %s", exc)
                raise
            await response.write_eof()
            return response

    async def _rewrite_images(self, upstream: aiohttp.ClientResponse) -> web.Response:
        raw = await upstream.read()
        try:
            body = json.loads(raw)
        except ValueError:  # not JSON (or encoded after all): passed on as it came, with its encoding named
            headers = {k: v for k, v in upstream.headers.items()
                       if k.lower() in ("content-encoding", "content-type", "vary")}
            return web.Response(status=upstream.status, body=raw, headers=headers)
        if isinstance(body, dict) and isinstance(body.get("images"), list):
            body["images"] = [await self._as_base64(img) for img in body["images"]]
        return web.json_response(body, status=upstream.status)

    async def _as_base64(self, ref: object) -> object:
        if not isinstance(ref, str):
            return ref
        if is_data_url(ref):
            return base64.b64encode(decode_data_url(ref)[1]).decode()
        if ref.lstrip("/").startswith("View/"):
            assert self._session is not None
            async with self._session.get(f"{self.upstream}/{view_path(ref)}",
                                         headers={"Authorization": f"Bearer {self._upstream_secret()}",
                                                  "Accept-Encoding": "identity"}) as r:
                if r.status == 200:
                    return base64.b64encode(await r.read()).decode()
                log.warning("could not fetch %s for the legacy rewrite: HTTP %d", ref, r.status)
        return ref

    async def _proxy_ws(self, request: web.Request, target: str, token: str, *,
                        note_session: bool = False) -> web.StreamResponse:
        assert self._session is not None
        ws_target = "ws" + target[4:] if target.startswith("http") else target
        headers = self._upstream_headers(request)
        try:
            upstream = await self._session.ws_connect(ws_target, headers=headers, max_msg_size=0)
        except aiohttp.WSServerHandshakeError as exc:
            return _error(exc.status or 502, "swarmui_refused", "SwarmUI refused the WebSocket.")
        except aiohttp.ClientError:
            return self._unreachable()
        client = web.WebSocketResponse(max_msg_size=0)
        await client.prepare(request)
        self._sockets.setdefault(token, set()).add(client)

        async def pump(src, dst, note: bool = False) -> None:
            async for msg in src:
                if msg.type == WSMsgType.TEXT:
                    if note:  # each message on a generation socket is a generation request
                        self.sessions.note(token, session_of(msg.data))
                    await dst.send_str(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await dst.send_bytes(msg.data)
                elif msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break

        tasks = [asyncio.create_task(pump(client, upstream, note_session)),
                 asyncio.create_task(pump(upstream, client))]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            code = upstream.close_code
            await upstream.close()
            if code in (None, 1005):
                code = aiohttp.WSCloseCode.OK
            elif code in (1006, 1015):  # reserved codes that cannot be sent: the upstream broke
                code = aiohttp.WSCloseCode.INTERNAL_ERROR
            if not client.closed:
                await client.close(code=code)
            sockets = self._sockets.get(token)
            if sockets is not None:
                sockets.discard(client)
        return client
