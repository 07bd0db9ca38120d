"""A SwarmUI stand-in that speaks the documented API (reference/swarmui.md), for tests.

Run it the way SwarmUI is run, so the worker's process manager can launch it through its
configurable launch command:

    python -m tests.fakes.swarmui --launch_mode none --host 127.0.0.1 --port 7810 \
        --data_dir D --settings_file D/Settings.fds --backends_file D/Backends.fds

What it reproduces:
- `POST /API/<Route>` with a JSON body; routes are case-insensitive; a chunked body or a
  missing Content-Length gets 400 `basic_api`; GET gets `bad_request_method`, and so does
  a `...WS` route over HTTP or an HTTP route over a WebSocket.
- `GetNewSession`; unknown session ids get 401 `invalid_session_id`; sessions live in
  memory, so a restarted server forgets them (as a new container does).
- `GenerateText2Image` (HTTP) and `GenerateText2ImageWS` (status, `gen_progress` per step,
  `image` messages, then a normal close); outputs are `View/local/raw/<date>/...` paths or
  `data:` URLs with `donotsave`; videos (`videomodel`) come out as `.mp4`/`.webm`/...
- Handler errors (unknown model, bad init image, missing `images`) as HTTP 200 `{"error"}`.
- `ListModels` scanning the `ModelRoot` folders, writing `model_metadata.ldb` into every
  folder it scans (the shared-volume hazard); `ListBackends`, `GetCurrentStatus`,
  `GetGlobalStatus` with live/waiting counts; `SelectModel`, `TriggerRefresh`, `InterruptAll`
  (the calling session's generations; with `other_sessions`, everyone's). A generation whose
  WebSocket closes runs on to the end, as nothing tells SwarmUI to stop it.
- `Network.RequiredAuthorization` with the `AuthBypassIPs` loopback exemption.
- `GET /View/...` serving files from the output folder.
- ASP.NET response compression (br, gzip) of JSON/text replies, chosen from the request's
  `Accept-Encoding` (see `aspnet_compression`).

Behaviour knobs (environment): FAKE_SWARMUI_START_DELAY (seconds before the port opens),
FAKE_SWARMUI_BACKEND_DELAY (seconds the backend reports `loading`), FAKE_SWARMUI_FAIL_START
(log an error and exit 1 at start), FAKE_SWARMUI_STEP_SECONDS (time per sampling step),
FAKE_SWARMUI_CRASH_WORD (a prompt containing it kills the process mid-generation),
FAKE_SWARMUI_VIDEO_BYTES (size of a video output).

`GET /__fake__/requests` and `GET /__fake__/env` (not part of SwarmUI) list the headers of the
requests received and the names of the environment variables the process got.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import json
import os
import re
import struct
import sys
import time
import uuid
import zlib
from datetime import datetime
from pathlib import Path

from aiohttp import WSMsgType, web

VERSION = "0.9.8.2"
WS_ROUTES = {"generatetext2imagews", "domodeldownloadws"}
SUBTYPE_FOLDERS = {
    "Stable-Diffusion": ["Stable-Diffusion", "diffusion_models", "unet", "tensorrt"],
    "LoRA": ["Lora", "LyCORIS"],
    "VAE": ["VAE"],
    "Embedding": ["Embeddings", "embeddings"],
    "ControlNet": ["controlnet", "model_patches"],
    "Clip": ["text_encoders", "clip"],
    "ClipVision": ["clip_vision"],
}
MODEL_EXTS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft", ".engine")
VIDEO_EXT = {"webp": ".webp", "gif": ".gif", "gif-hd": ".gif", "webm": ".webm", "h264-mp4": ".mp4",
             "h265-mp4": ".mp4", "prores": ".mov"}


def log(msg: str) -> None:
    print(f"{datetime.now():%H:%M:%S.%f} [Info] {msg}", flush=True)


def parse_fds(text: str) -> dict:
    """SwarmUI's FDS format: `key: value` lines, sections by tab indentation."""
    root: dict = {}
    stack: list[tuple[int, dict]] = [(-1, root)]
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        depth = len(raw) - len(raw.lstrip("\t"))
        key, _, value = raw.strip().partition(":")
        while stack[-1][0] >= depth:
            stack.pop()
        parent = stack[-1][1]
        value = value.strip()
        if value == "":
            child: dict = {}
            parent[key.strip()] = child
            stack.append((depth, child))
        else:
            parent[key.strip()] = value.strip('"')
    return root


# -- response compression, as ASP.NET Core's ResponseCompression middleware does it ---------------------------------
# SwarmUI registers it with default options (mcmonkeyprojects/SwarmUI src/Core/WebServer.cs:146
# `AddResponseCompression()`, :210 `UseResponseCompression()` at the commit images/swarm-worker/Dockerfile pins,
# 062407c7), after its RequiredAuthorization middleware (:149-209), so that middleware's 401 goes out plain.
# Defaults (dotnet/aspnetcore src/Middleware/ResponseCompression/src/..., commit c83ad306 unless noted):
# - providers Brotli then Gzip (ResponseCompressionProvider.cs:46-53); no Accept-Encoding, no compression
#   (:227-233); q=0 entries skipped, `*` matches every provider, `identity` is a candidate without a provider;
#   the highest quality wins, ties go to the provider listed first (:104-157);
# - not over HTTPS by default, nor when the response already has Content-Encoding or Content-Range (:176-194);
#   only the default MIME types (ResponseCompressionDefaults.cs, commit 03ce2ef1), compared without parameters
#   (:204-214);
# - once the MIME type qualifies: `Vary: Accept-Encoding` (even if no provider is chosen), then
#   `Content-Encoding`, and Content-Length removed, so the body goes out chunked
#   (ResponseCompressionBody.cs:234-267, commit 08066096). SwarmUI's JSON replies are `application/json`
#   with an exact Content-Length (SwarmUI src/Utils/Utilities.cs:469-486 `YieldJsonOutput`).
COMPRESSIBLE_TYPES = {"text/plain", "text/css", "application/javascript", "text/html", "application/xml", "text/xml",
                      "application/json", "text/json", "application/wasm"}
COMPRESSION_PROVIDERS = ("br", "gzip")


def choose_encoding(accept: str) -> str | None:
    """The provider ASP.NET picks for an Accept-Encoding value (None: send the body as it is)."""
    candidates: dict[str, tuple[float, int]] = {}  # name -> (quality, priority); the first entry for a name wins
    for item in accept.split(","):
        name, _, params = item.strip().partition(";")
        name = name.strip()
        if not name:
            continue
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    return None  # an unparsable list: no compression
        if quality <= 0:
            continue
        for priority, provider in enumerate(COMPRESSION_PROVIDERS):
            if provider == name.lower():
                candidates.setdefault(provider, (quality, priority))
        if name == "*":
            for priority, provider in enumerate(COMPRESSION_PROVIDERS):
                candidates.setdefault(provider, (quality, priority))
            break
        if name.lower() == "identity":
            candidates.setdefault("identity", (quality, 1 << 30))
    if not candidates:
        return None
    best = min(candidates.items(), key=lambda kv: (-kv[1][0], kv[1][1]))[0]
    return None if best == "identity" else best


def compress(data: bytes, encoding: str) -> bytes:
    if encoding == "br":
        import brotli

        return brotli.compress(data)
    return gzip.compress(data)


@web.middleware
async def aspnet_compression(request: web.Request, handler):
    response = await handler(request)
    accept = request.headers.get("Accept-Encoding", "")
    if (not accept or not isinstance(response, web.Response) or not isinstance(response.body, bytes) or request.secure
            or "Content-Encoding" in response.headers or "Content-Range" in response.headers
            or response.content_type.lower() not in COMPRESSIBLE_TYPES):
        return response
    response.headers.add("Vary", "Accept-Encoding")
    encoding = choose_encoding(accept)
    if encoding is None:
        return response
    body = response.body
    out = web.StreamResponse(status=response.status, reason=response.reason)
    for key, value in response.headers.items():
        if key.lower() not in ("content-length", "content-type"):
            out.headers.add(key, value)
    out.content_type = response.content_type
    if response.charset:
        out.charset = response.charset
    out.headers["Content-Encoding"] = encoding
    out.enable_chunked_encoding()
    await out.prepare(request)
    await out.write(compress(body, encoding))
    await out.write_eof()
    return out


def tiny_png(seed: int) -> bytes:
    """A valid 8x8 RGB PNG whose colour depends on `seed`."""
    r, g, b = (seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256
    raw = b"".join(b"\x00" + bytes([r, g, b]) * 8 for _ in range(8))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def fake_video(size: int, seed: int) -> bytes:
    head = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"
    body = bytes((seed + i) % 251 for i in range(max(0, size - len(head))))
    return head + body


class FakeSwarm:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        data_dir = Path(args.data_dir or "Data")
        self.settings = {}
        settings_file = Path(args.settings_file or data_dir / "Settings.fds")
        if settings_file.exists():
            self.settings = parse_fds(settings_file.read_text())
        backends_file = Path(args.backends_file or data_dir / "Backends.fds")
        self.backends = parse_fds(backends_file.read_text()) if backends_file.exists() else {}
        paths = self.settings.get("Paths", {})
        self.model_roots = [Path(p) for p in (paths.get("ModelRoot") or "Models").split(";") if p]
        self.output_dir = Path(paths.get("OutputPath") or "Output")
        net = self.settings.get("Network", {})
        self.required_auth = net.get("RequiredAuthorization", "")
        bypass = net.get("AuthBypassIPs") if "AuthBypassIPs" in net else "127.0.0.1,::1,::ffff:127.0.0.1"
        self.bypass_ips = {ip.strip() for ip in bypass.split(",") if ip.strip()}
        self.sessions: set[str] = set()
        self.started = time.monotonic()
        self.backend_delay = float(os.environ.get("FAKE_SWARMUI_BACKEND_DELAY", "0"))
        self.step_seconds = float(os.environ.get("FAKE_SWARMUI_STEP_SECONDS", "0.01"))
        self.crash_word = os.environ.get("FAKE_SWARMUI_CRASH_WORD", "CRASH_SWARMUI")
        self.video_bytes = int(os.environ.get("FAKE_SWARMUI_VIDEO_BYTES", "4096"))
        self.live_gens = 0
        self.waiting_gens = 0
        self.counter = 0
        self.interrupt_generation = 0  # bumped by InterruptAll with other_sessions
        self.session_interrupts: dict[str, int] = {}  # bumped per session by InterruptAll without
        self.request_log: list[dict] = []

    # -- helpers --------------------------------------------------------------------------------------

    def backend_status(self) -> str:
        return "running" if time.monotonic() - self.started >= self.backend_delay else "loading"

    def status_body(self) -> dict:
        loading = self.backend_status() == "loading"
        return {
            "status": {"waiting_gens": self.waiting_gens, "loading_models": 0,
                       "waiting_backends": 1 if loading and self.live_gens else 0, "live_gens": self.live_gens},
            "backend_status": {"status": self.backend_status(), "class": "", "message": "",
                               "any_loading": loading},
            "supported_features": ["comfyui", "video"],
        }

    def find_model(self, subtype: str, name: str) -> Path | None:
        wanted = name.replace("\\", "/").strip("/")
        for root in self.model_roots:
            for folder in SUBTYPE_FOLDERS[subtype]:
                base = root / folder
                for candidate in (base / wanted, *(base / (wanted + ext) for ext in MODEL_EXTS)):
                    if candidate.is_file():
                        return candidate
        return None

    def scan_models(self, subtype: str, path: str, depth: int) -> tuple[list[str], list[dict]]:
        folders: set[str] = set()
        files: dict[str, dict] = {}
        for root in self.model_roots:
            for folder in SUBTYPE_FOLDERS.get(subtype, []):
                base = root / folder
                if not base.is_dir():
                    continue
                for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
                    rel_dir = Path(dirpath).relative_to(base).as_posix()
                    rel_dir = "" if rel_dir == "." else rel_dir
                    # SwarmUI keeps a metadata cache in every folder it scans.
                    (Path(dirpath) / "model_metadata.ldb").write_bytes(b"LDB fake metadata cache\n")
                    for d in dirnames:
                        folders.add(f"{rel_dir}/{d}".lstrip("/"))
                    for fn in filenames:
                        if not fn.lower().endswith(MODEL_EXTS):
                            continue
                        name = f"{rel_dir}/{fn}".lstrip("/")
                        if path and not name.startswith(path.rstrip("/") + "/"):
                            continue
                        if name.count("/") - (path.count("/") + 1 if path else 0) >= depth:
                            continue
                        files.setdefault(name, {"name": name, "title": Path(fn).stem, "local": True,
                                                "architecture": None, "loaded": False,
                                                "time_modified": int((Path(dirpath) / fn).stat().st_mtime)})
        return sorted(folders), sorted(files.values(), key=lambda f: f["name"])

    def save_output(self, data: bytes, ext: str, prompt: str, model: str) -> str:
        day = datetime.now().strftime("%Y-%m-%d")
        self.counter += 1
        safe_prompt = re.sub(r"[^\w ]+", "", prompt)[:30].strip() or "output"
        safe_model = re.sub(r"[^\w.-]+", "", Path(model).stem)[:30] or "model"
        name = f"{datetime.now():%H%M}{self.counter:03d}-{safe_prompt}-{safe_model}{ext}"
        target = self.output_dir / "local" / "raw" / day / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return f"View/local/raw/{day}/{name}"

    # -- middleware -------------------------------------------------------------------------------------

    @web.middleware
    async def gate(self, request: web.Request, handler):
        self.request_log.append({"path": request.path, "method": request.method, "headers": dict(request.headers),
                                 "remote": request.remote})
        del self.request_log[:-200]
        if request.path.startswith("/__fake__/"):
            return await handler(request)
        if self.required_auth and request.remote not in self.bypass_ips:
            if request.headers.get("Authorization", "") != self.required_auth:
                return web.Response(status=401, text="Unauthorized")
        return await handler(request)

    # -- routes --------------------------------------------------------------------------------------------

    async def api(self, request: web.Request) -> web.StreamResponse:
        route = request.match_info["route"].lower()
        is_ws = request.headers.get("Upgrade", "").lower() == "websocket"
        if is_ws != (route in WS_ROUTES):
            return web.json_response({"error": "Invalid request method for this route.",
                                      "error_id": "bad_request_method"}, status=400)
        if is_ws:
            return await self.generate_ws(request)
        if request.method != "POST":
            return web.json_response({"error": "Invalid request method.", "error_id": "bad_request_method"}, status=400)
        if request.headers.get("Content-Length") is None:
            return web.json_response({"error": "Request must have a content-length.", "error_id": "basic_api"},
                                     status=400)
        try:
            body = json.loads(await request.read() or b"null")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return web.json_response({"error": "Request body must be a JSON object.", "error_id": "basic_api"},
                                     status=400)
        if route == "getnewsession":
            sid = uuid.uuid4().hex.upper()
            self.sessions.add(sid)
            return web.json_response({"session_id": sid, "user_id": "local", "output_append_user": True,
                                      "version": VERSION, "server_id": "fake-server", "permissions": ["*"]})
        sid = body.get("session_id") or request.headers.get("X-Session-ID")
        if sid not in self.sessions:
            return web.json_response({"error": "Invalid session ID. You may need to refresh the page.",
                                      "error_id": "invalid_session_id"}, status=401)
        handler = getattr(self, f"route_{route}", None)
        if handler is None:
            return web.json_response({"error": "Invalid route.", "error_id": "bad_route"}, status=404)
        return web.json_response(await handler(body))

    async def route_listmodels(self, body: dict) -> dict:
        if "depth" not in body:
            return {"error": "Missing required parameter 'depth'."}
        subtype = body.get("subtype") or "Stable-Diffusion"
        if subtype not in SUBTYPE_FOLDERS and subtype != "Wildcards":
            return {"error": f"Invalid sub-type '{subtype}'."}
        folders, files = self.scan_models(subtype, body.get("path") or "", int(body["depth"]))
        return {"folders": folders, "files": files}

    async def route_listbackends(self, body: dict) -> dict:
        out = {}
        for key, be in (self.backends or {"0": {"type": "comfyui_selfstart", "title": "ComfyUI"}}).items():
            out[key] = {"id": int(key), "type": be.get("type"), "title": be.get("title", ""),
                        "status": self.backend_status(), "enabled": be.get("enabled", "true") == "true",
                        "current_model": None, "features": [], "settings": be.get("settings", {})}
        return out

    async def route_getcurrentstatus(self, body: dict) -> dict:
        return self.status_body()

    async def route_getglobalstatus(self, body: dict) -> dict:
        return self.status_body()

    async def route_selectmodel(self, body: dict) -> dict:
        if not self.find_model("Stable-Diffusion", str(body.get("model", ""))):
            return {"error": f"Model '{body.get('model')}' not found."}
        return {"success": True}

    async def route_interruptall(self, body: dict) -> dict:
        if str(body.get("other_sessions", "false")).lower() == "true":
            self.interrupt_generation += 1
        else:
            sid = str(body.get("session_id"))
            self.session_interrupts[sid] = self.session_interrupts.get(sid, 0) + 1
        return {"success": True}

    async def route_triggerrefresh(self, body: dict) -> dict:
        return {"success": True}

    async def route_generatetext2image(self, body: dict) -> dict:
        result: dict = {"images": []}

        async def sink(event: dict) -> None:
            if "image" in event:
                result["images"].append(event["image"]["image"])
            elif "error" in event:
                result.clear()
                result["error"] = event["error"]

        await self.run_generation(body, sink)
        return result

    async def generate_ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        msg = await ws.receive()
        if msg.type != WSMsgType.TEXT:
            await ws.close()
            return ws
        try:
            body = json.loads(msg.data)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            await ws.send_json({"error": "Request body must be a JSON object.", "error_id": "basic_api"})
        elif body.get("session_id") not in self.sessions:
            await ws.send_json({"error": "Invalid session ID. You may need to refresh the page.",
                                "error_id": "invalid_session_id"})
        else:
            async def sink(event: dict) -> None:
                if not ws.closed:
                    try:
                        await ws.send_json(event)
                    except ConnectionError:  # the client went away; the generation runs on
                        pass

            await self.run_generation(body, sink)
        await ws.close()
        return ws

    async def run_generation(self, body: dict, emit) -> None:
        try:
            images = int(body["images"])
        except (KeyError, TypeError, ValueError):
            await emit({"error": "Invalid or missing parameter 'images'."})
            return
        model = str(body.get("model") or "")
        if model and not self.find_model("Stable-Diffusion", model):
            await emit({"error": f"Invalid model name '{model}': model not found."})
            return
        videomodel = str(body.get("videomodel") or "")
        if videomodel and not self.find_model("Stable-Diffusion", videomodel):
            await emit({"error": f"Invalid video model '{videomodel}': model not found."})
            return
        init = body.get("initimage")
        if init is not None:
            data = str(init).split(",", 1)[1] if str(init).startswith("data:") else str(init)
            try:
                base64.b64decode(data, validate=True)
            except ValueError:
                await emit({"error": "Invalid image data for parameter 'Init Image'."})
                return
        if self.backend_status() != "running":
            self.waiting_gens += 1
            while self.backend_status() != "running":
                await asyncio.sleep(0.05)
            self.waiting_gens -= 1
        steps = int(body.get("videosteps") or body.get("steps") or 20) if videomodel else int(body.get("steps") or 20)
        prompt = str(body.get("prompt") or "")
        sid = str(body.get("session_id"))
        interrupt_mark = (self.interrupt_generation, self.session_interrupts.get(sid, 0))
        self.live_gens += 1
        try:
            await emit({"status": self.status_body()["status"], "backend_status": self.status_body()["backend_status"]})
            for index in range(images):
                for step in range(steps):
                    await asyncio.sleep(self.step_seconds)
                    if self.crash_word and self.crash_word in prompt and step >= steps // 2:
                        log("[Error] Backend crashed: simulated fatal error in sampler (CUDA error: an illegal memory access)")
                        os._exit(134)
                    if (self.interrupt_generation, self.session_interrupts.get(sid, 0)) != interrupt_mark:
                        return
                    overall = (index * steps + step + 1) / (images * steps)
                    await emit({"gen_progress": {"batch_index": str(index), "overall_percent": round(overall, 4),
                                                 "current_percent": round((step + 1) / steps, 4),
                                                 "preview": "data:image/jpeg;base64,/9j/AA=="}})
                seed = int(body.get("seed", -1))
                seed = seed if seed >= 0 else self.counter + index
                if videomodel:
                    fmt = str(body.get("videoformat") or "h264-mp4")
                    ext = VIDEO_EXT.get(fmt, ".mp4")
                    data, mime = fake_video(self.video_bytes, seed), "video/mp4" if ext == ".mp4" else f"video/{ext[1:]}"
                else:
                    data, ext, mime = tiny_png(seed), ".png", "image/png"
                if str(body.get("donotsave", "false")).lower() == "true":
                    ref = f"data:{mime};base64," + base64.b64encode(data).decode()
                else:
                    ref = self.save_output(data, ext, prompt, videomodel or model)
                meta = json.dumps({"sui_image_params": {"prompt": prompt, "seed": seed, "model": model}})
                await emit({"image": {"image": ref, "batch_index": str(index), "metadata": meta}})
        finally:
            self.live_gens -= 1

    async def view(self, request: web.Request) -> web.StreamResponse:
        rel = request.match_info["path"]
        parts = Path(rel).parts
        if ".." in parts or not parts:
            return web.Response(status=404, text="404 not found")
        target = self.output_dir.joinpath(*parts)
        if not target.is_file():
            return web.Response(status=404, text="404 not found")
        return web.FileResponse(target)

    async def fake_requests(self, request: web.Request) -> web.Response:
        return web.json_response(self.request_log)

    async def fake_env(self, request: web.Request) -> web.Response:
        return web.json_response(sorted(os.environ))

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.gate, aspnet_compression], client_max_size=200 * 1024 * 1024)
        app.router.add_route("*", "/API/{route}", self.api)
        app.router.add_route("*", "/api/{route}", self.api)
        app.router.add_get("/View/{path:.*}", self.view)
        app.router.add_get("/__fake__/requests", self.fake_requests)
        app.router.add_get("/__fake__/env", self.fake_env)
        app.router.add_get("/", lambda r: web.Response(text="<html>SwarmUI</html>", content_type="text/html"))
        return app


def launch_command(python: str = sys.executable) -> str:
    """The SwarmUI-style launch command for this stand-in (`{port}` etc. filled in by the caller)."""
    return (f"{python} -m tests.fakes.swarmui --launch_mode none --host 127.0.0.1 --port {{port}} "
            "--data_dir {data_dir} --settings_file {settings_file} --backends_file {backends_file}")


def write_settings(data_dir: Path, *, model_root: Path, output_dir: Path, required_auth: str = "",
                   bypass_ips: str | None = None) -> None:
    """Minimal Settings.fds for running the stand-in on its own (the worker writes its own)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    lines = ["IsInstalled: true", "Paths:", f"\tModelRoot: {model_root}", f"\tOutputPath: {output_dir}", "Network:",
             f"\tRequiredAuthorization: {required_auth}"]
    if bypass_ips is not None:
        lines.append("\tAuthBypassIPs: " + (bypass_ips or '""'))
    (data_dir / "Settings.fds").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="SwarmUI API stand-in for tests")
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=7801)
    parser.add_argument("--launch_mode", default="webinstall")
    parser.add_argument("--data_dir")
    parser.add_argument("--settings_file")
    parser.add_argument("--backends_file")
    parser.add_argument("--loglevel", default="Info")
    args, _unknown = parser.parse_known_args(argv)
    log(f"=== SwarmUI v{VERSION} Starting (fake) ===")
    delay = float(os.environ.get("FAKE_SWARMUI_START_DELAY", "0"))
    if delay:
        log(f"Loading settings, extensions and models (simulated {delay}s)...")
        time.sleep(delay)
    if os.environ.get("FAKE_SWARMUI_FAIL_START"):
        log("[Error] Failed to load settings: simulated startup failure")
        log("[Error] SwarmUI cannot start")
        sys.exit(1)
    fake = FakeSwarm(args)
    log(f"Model roots: {';'.join(str(r) for r in fake.model_roots)}; output: {fake.output_dir}")
    log(f"SwarmUI v{VERSION} is now running at http://{args.host}:{args.port}")
    web.run_app(fake.app(), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
