"""Async SwarmUI API client (aiohttp), shared by the swarm worker and the operator tools.

What it takes care of, so callers do not have to:
- one SwarmUI session id, fetched lazily and renewed once when SwarmUI answers
  `invalid_session_id` (a restarted SwarmUI forgets its sessions);
- SwarmUI's habit of reporting handler failures as HTTP 200 `{"error": ...}`: every
  such body raises `SwarmUIError`;
- `GenerateText2Image` over the WebSocket route by default, because RunPod's proxy and
  Cloudflare tunnels cut plain HTTP responses that take longer than 100 s;
- outputs that come back as `View/...` paths or as `data:` URLs.

`base_url` may carry a path prefix (for example a gateway's `https://host/t/<token>`);
routes are appended to it. `token` is sent as `Authorization: Bearer <token>` on HTTP
and WebSocket requests.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import mimetypes
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from common.swarmui.params import T2IParams

log = logging.getLogger("swarmui.client")

DEFAULT_HTTP_TIMEOUT = 60.0
# Subtypes SwarmUI's ListModels understands.
MODEL_SUBTYPES = ("Stable-Diffusion", "LoRA", "VAE", "Embedding", "ControlNet", "Clip", "ClipVision")

EventCallback = Callable[[dict[str, Any]], Awaitable[None] | None]


class SwarmUIError(Exception):
    """SwarmUI answered with an error (HTTP status or an `error` field in a 200 body)."""

    def __init__(self, message: str, *, error_id: str | None = None, status: int | None = None,
                 route: str | None = None):
        super().__init__(message)
        self.message = message
        self.error_id = error_id
        self.status = status
        self.route = route

    def __str__(self) -> str:
        where = f"{self.route}: " if self.route else ""
        tag = f" [{self.error_id}]" if self.error_id else ""
        return f"{where}{self.message}{tag}"


class SwarmUIUnavailable(SwarmUIError):
    """SwarmUI could not be reached, or the connection broke before it answered."""


@dataclass
class GenerationResult:
    """Outputs of one generation: `View/...` paths or `data:` URLs, in batch order."""

    outputs: list[str]
    metadata: list[str | None] = field(default_factory=list)
    progress_events: int = 0
    last_percent: float = 0.0


@dataclass
class ModelListing:
    folders: list[str]
    files: list[dict[str, Any]]

    @property
    def names(self) -> list[str]:
        return [f["name"] for f in self.files if isinstance(f, dict) and f.get("name")]


_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?);base64,(?P<data>.*)$", re.S)


def is_data_url(ref: str) -> bool:
    return ref.startswith("data:")


def decode_data_url(ref: str) -> tuple[str, bytes]:
    """`data:<mime>;base64,<b64>` -> (mime, bytes)."""
    m = _DATA_URL.match(ref)
    if not m:
        raise SwarmUIError("output is not a base64 data: URL")
    try:
        data = base64.b64decode(m.group("data"), validate=False)
    except (binascii.Error, ValueError) as exc:
        raise SwarmUIError(f"output data: URL is not valid base64 ({exc})") from None
    return m.group("mime") or "application/octet-stream", data


def view_path(ref: str) -> str:
    """Normalise an output reference to a URL-encoded `View/...` path (no leading slash)."""
    path = ref.lstrip("/")
    if not path.startswith("View/"):
        raise SwarmUIError(f"output reference is neither a View/ path nor a data: URL: {ref[:80]!r}")
    return quote(path, safe="/")


def output_filename(ref: str, index: int = 0) -> str:
    """A file name for an output: the View/ path's last part, or one made from the data URL's type."""
    if is_data_url(ref):
        m = _DATA_URL.match(ref)
        mime = (m.group("mime") if m else None) or "application/octet-stream"
        ext = {"image/jpeg": ".jpg", "video/mp4": ".mp4", "image/webp": ".webp"}.get(mime) or (
            mimetypes.guess_extension(mime) or ".bin")
        return f"output-{index:02d}{ext}"
    name = ref.rstrip("/").rsplit("/", 1)[-1]
    name = re.sub(r"[^\w.\- ]+", "_", name).strip() or f"output-{index:02d}.bin"
    return name[-180:]


def _ws_url(http_url: str) -> str:
    if http_url.startswith("https://"):
        return "wss://" + http_url[len("https://"):]
    if http_url.startswith("http://"):
        return "ws://" + http_url[len("http://"):]
    return http_url


def _batch_index(value: Any) -> int | None:
    """SwarmUI sends batch indices as strings ("0") in image messages and as numbers in `discard_indices`."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _raise_for_body(route: str, status: int, body: Any) -> None:
    if isinstance(body, dict) and body.get("error"):
        raise SwarmUIError(str(body["error"]), error_id=body.get("error_id"), status=status, route=route)
    if status >= 400:
        raise SwarmUIError(f"HTTP {status}", status=status, route=route)


class SwarmUIClient:
    """One SwarmUI server. Use as `async with SwarmUIClient(url) as c:` or call `close()`."""

    def __init__(self, base_url: str, *, token: str | None = None, headers: Mapping[str, str] | None = None,
                 http_timeout: float = DEFAULT_HTTP_TIMEOUT, generate_timeout: float | None = 3600.0,
                 session: aiohttp.ClientSession | None = None):
        self.base_url = base_url.rstrip("/")
        self.http_timeout = http_timeout
        self.generate_timeout = generate_timeout
        self._headers = dict(headers or {})
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._session = session
        self._own_session = session is None
        self._session_id: str | None = None
        self._session_lock = asyncio.Lock()
        self.server_info: dict[str, Any] = {}

    # -- plumbing ---------------------------------------------------------------------------------

    async def __aenter__(self) -> SwarmUIClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session and self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
            self._own_session = True
        return self._session

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    async def _post_raw(self, route: str, body: dict[str, Any], timeout: float | None) -> tuple[int, Any]:
        data = json.dumps(body).encode()
        headers = {**self._headers, "Content-Type": "application/json"}
        try:
            async with self._http().post(self.url(f"API/{route}"), data=data, headers=headers,
                                         timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                text = await resp.text()
                try:
                    parsed: Any = json.loads(text) if text else None
                except ValueError:
                    parsed = None
                if parsed is None and resp.status < 400:
                    raise SwarmUIError(f"non-JSON answer (HTTP {resp.status}): {text[:200]!r}",
                                       status=resp.status, route=route)
                if parsed is None:
                    parsed = {"error": text[:500] or f"HTTP {resp.status}"}
                return resp.status, parsed
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise SwarmUIUnavailable(f"connection failed: {exc}", route=route) from None
        except asyncio.TimeoutError:
            raise SwarmUIUnavailable(f"no answer within {timeout} s", route=route) from None

    # -- sessions -----------------------------------------------------------------------------------

    async def _get_new_session(self) -> str:
        status, body = await self._post_raw("GetNewSession", {}, self.http_timeout)
        _raise_for_body("GetNewSession", status, body)
        sid = body.get("session_id") if isinstance(body, dict) else None
        if not sid:
            raise SwarmUIError("GetNewSession returned no session_id", route="GetNewSession")
        self.server_info = {k: v for k, v in body.items() if k != "session_id"}
        return sid

    async def new_session(self) -> str:
        """A new session id, which becomes the one every call uses."""
        self._session_id = await self._get_new_session()
        return self._session_id

    async def session_id(self, *, renew: bool = False) -> str:
        async with self._session_lock:
            if renew or not self._session_id:
                await self.new_session()
            assert self._session_id
            return self._session_id

    # -- HTTP routes ----------------------------------------------------------------------------------

    async def call(self, route: str, body: dict[str, Any] | None = None, *, timeout: float | None = None) -> dict:
        """POST one API route with the session id; renews the session once on `invalid_session_id`."""
        timeout = self.http_timeout if timeout is None else timeout
        for attempt in (0, 1):
            sid = await self.session_id(renew=attempt == 1)
            status, result = await self._post_raw(route, {**(body or {}), "session_id": sid}, timeout)
            if isinstance(result, dict) and result.get("error_id") == "invalid_session_id" and attempt == 0:
                continue
            _raise_for_body(route, status, result)
            return result if isinstance(result, dict) else {"result": result}
        raise AssertionError("unreachable")

    async def list_models(self, subtype: str = "Stable-Diffusion", *, path: str = "", depth: int = 999,
                          allow_remote: bool = False, data_images: bool = False) -> ModelListing:
        body = await self.call("ListModels", {"path": path, "depth": depth, "subtype": subtype,
                                              "allowRemote": allow_remote, "dataImages": data_images})
        return ModelListing(list(body.get("folders") or []), list(body.get("files") or []))

    async def current_status(self) -> dict:
        return await self.call("GetCurrentStatus")

    async def global_status(self) -> dict:
        return await self.call("GetGlobalStatus")

    async def list_backends(self, *, full_data: bool = False) -> dict:
        return await self.call("ListBackends", {"nonreal": False, "full_data": full_data})

    async def select_model(self, model: str, *, timeout: float | None = None) -> dict:
        return await self.call("SelectModel", {"model": model}, timeout=timeout or self.generate_timeout)

    async def interrupt_all(self, *, other_sessions: bool = True) -> dict:
        return await self.call("InterruptAll", {"other_sessions": other_sessions})

    async def trigger_refresh(self, *, strong: bool = True, timeout: float | None = None) -> dict:
        """Rescan the model folders. It takes SwarmUI's refresh write lock and can take minutes on a big
        volume (hence `timeout`); SwarmUI silently skips a refresh within 10 s of the previous one or of
        its start (mcmonkeyprojects/SwarmUI src/WebAPI/T2IAPI.cs TriggerRefresh)."""
        return await self.call("TriggerRefresh", {"strong": strong}, timeout=timeout)

    # -- generation -------------------------------------------------------------------------------------

    async def generate(self, params: T2IParams | Mapping[str, Any], *, websocket: bool = True,
                       on_event: EventCallback | None = None, timeout: float | None = None,
                       own_session: bool = False) -> GenerationResult:
        """Run `GenerateText2Image` (WebSocket route unless `websocket=False`) and collect its outputs.

        With `own_session`, the generation runs in a session of its own, which is interrupted when the
        caller is cancelled or gives up (timeout, lost connection): SwarmUI would otherwise finish a
        generation nobody waits for, and a shared session's interrupt would stop everyone's."""
        body = params.to_body() if isinstance(params, T2IParams) else dict(params)
        body.setdefault("images", 1)
        timeout = self.generate_timeout if timeout is None else timeout
        if own_session:
            sid = await self._get_new_session()
            try:
                if websocket:
                    return await self._generate_ws({**body, "session_id": sid}, on_event, timeout)
                status, result = await self._post_raw("GenerateText2Image", {**body, "session_id": sid}, timeout)
                _raise_for_body("GenerateText2Image", status, result)
                images = list(result.get("images") or [])
                return GenerationResult(outputs=images, metadata=[None] * len(images))
            except BaseException:
                await self.interrupt_session(sid)
                raise
        if not websocket:
            result = await self.call("GenerateText2Image", body, timeout=timeout)
            images = list(result.get("images") or [])
            return GenerationResult(outputs=images, metadata=[None] * len(images))
        for attempt in (0, 1):
            sid = await self.session_id(renew=attempt == 1)
            try:
                return await self._generate_ws({**body, "session_id": sid}, on_event, timeout)
            except SwarmUIError as exc:
                if exc.error_id == "invalid_session_id" and attempt == 0:
                    continue
                raise
        raise AssertionError("unreachable")

    async def interrupt_session(self, sid: str) -> None:
        """Best effort: stop what the session `sid` is generating (nothing to stop is fine too)."""
        try:
            await asyncio.shield(self._post_raw("InterruptAll", {"session_id": sid, "other_sessions": False}, 10))
        except (Exception, asyncio.CancelledError) as exc:
            log.warning("could not interrupt SwarmUI session %s: %s", sid[:8], exc)

    async def _generate_ws(self, body: dict[str, Any], on_event: EventCallback | None,
                           timeout: float | None) -> GenerationResult:
        route = "GenerateText2ImageWS"
        try:
            return await asyncio.wait_for(self._run_ws(route, body, on_event), timeout)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise SwarmUIUnavailable(f"connection failed: {exc}", route=route) from None
        except aiohttp.WSServerHandshakeError as exc:
            raise SwarmUIError(f"WebSocket handshake refused (HTTP {exc.status})", status=exc.status,
                               error_id="worker_unauthorized" if exc.status == 401 else None, route=route) from None
        except asyncio.TimeoutError:
            raise SwarmUIUnavailable(f"generation did not finish within {timeout} s", route=route) from None

    async def _run_ws(self, route: str, body: dict[str, Any], on_event: EventCallback | None) -> GenerationResult:
        """Read SwarmUI's messages until it closes the socket (mcmonkeyprojects/SwarmUI src/WebAPI/T2IAPI.cs
        GenerateText2ImageWS and GenT2I_Internal): outputs are flat `{"image", "batch_index", "request_id",
        "metadata"}` messages (T2IAPI.cs:373; SwarmUI's own remote backend reads them so,
        src/Backends/SwarmSwarmBackend.cs:613-617); a negative batch index is not an output of the request (a grid, an
        intermediate image); `discard_indices` names outputs refused afterwards; `keep_alive`,
        `socket_intention` and the final status carry nothing to collect."""
        outputs: dict[int, tuple[str, str | None]] = {}
        discarded: set[int] = set()
        result = GenerationResult(outputs=[])
        async with self._http().ws_connect(_ws_url(self.url(f"API/{route}")), headers=self._headers,
                                           max_msg_size=0, heartbeat=30) as ws:
            await ws.send_str(json.dumps(body))
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.ERROR:
                    raise SwarmUIUnavailable(f"WebSocket error: {ws.exception()}", route=route)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    event = json.loads(msg.data)
                except ValueError:
                    continue
                if not isinstance(event, dict):
                    continue
                if event.get("error"):
                    raise SwarmUIError(str(event["error"]), error_id=event.get("error_id"), route=route)
                if isinstance(event.get("gen_progress"), dict):
                    result.progress_events += 1
                    percent = event["gen_progress"].get("overall_percent")
                    if isinstance(percent, (int, float)):
                        result.last_percent = float(percent)
                if isinstance(event.get("image"), str):
                    index = _batch_index(event.get("batch_index"))
                    if index is not None and index >= 0:
                        metadata = event.get("metadata")
                        outputs[index] = (event["image"], metadata if isinstance(metadata, str) else None)
                if isinstance(event.get("discard_indices"), list):
                    discarded.update(i for i in map(_batch_index, event["discard_indices"]) if i is not None)
                if on_event is not None:
                    ret = on_event(event)
                    if asyncio.iscoroutine(ret):
                        await ret
            close_code = ws.close_code
        if close_code not in (None, 1000, 1001):
            raise SwarmUIUnavailable(f"WebSocket closed abnormally (code {close_code}) after {len(outputs)} output(s)",
                                     route=route)
        kept = sorted(i for i in outputs if i not in discarded)
        result.outputs = [outputs[i][0] for i in kept]
        result.metadata = [outputs[i][1] for i in kept]
        return result

    # -- outputs ------------------------------------------------------------------------------------------

    async def read_output(self, ref: str) -> bytes:
        """The bytes of one output (`data:` URL decoded, `View/` path downloaded)."""
        if is_data_url(ref):
            return decode_data_url(ref)[1]
        try:
            async with self._http().get(self.url(view_path(ref)), headers=self._headers,
                                        timeout=aiohttp.ClientTimeout(total=self.generate_timeout)) as resp:
                if resp.status != 200:
                    raise SwarmUIError(f"HTTP {resp.status} fetching output", status=resp.status, route="View")
                return await resp.read()
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise SwarmUIUnavailable(f"connection failed: {exc}", route="View") from None

    async def save_output(self, ref: str, dest_dir: Path, *, index: int = 0, chunk_size: int = 1 << 20) -> Path:
        """Write one output to `dest_dir` (streamed for `View/` paths) and return its path."""
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / output_filename(ref, index)
        if is_data_url(ref):
            dest.write_bytes(decode_data_url(ref)[1])
            return dest
        tmp = dest.with_name(dest.name + ".part")
        try:
            async with self._http().get(self.url(view_path(ref)), headers=self._headers,
                                        timeout=aiohttp.ClientTimeout(total=self.generate_timeout)) as resp:
                if resp.status != 200:
                    raise SwarmUIError(f"HTTP {resp.status} fetching output", status=resp.status, route="View")
                with tmp.open("wb") as fh:
                    async for chunk in resp.content.iter_chunked(chunk_size):
                        fh.write(chunk)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            tmp.unlink(missing_ok=True)
            raise SwarmUIUnavailable(f"connection failed: {exc}", route="View") from None
        tmp.replace(dest)
        return dest
