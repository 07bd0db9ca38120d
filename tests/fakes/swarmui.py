"""A SwarmUI stand-in that speaks SwarmUI's documented API (mcmonkeyprojects/SwarmUI docs/API.md and
docs/APIRoutes/*.md), for tests.

Run it the way SwarmUI is run, so the worker's process manager can launch it through its
configurable launch command:

    python -m tests.fakes.swarmui --launch_mode none --host 127.0.0.1 --port 7810 \
        --data_dir D --settings_file D/Settings.fds --backends_file D/Backends.fds

What it reproduces, each next to the upstream lines it follows (mcmonkeyprojects/SwarmUI at the
commit images/swarm-worker/Dockerfile pins, 062407c7; FreneticLLC/FreneticUtilities @6c5ab71):
- Settings.fds / Backends.fds parsed as FreneticUtilities parses FDS: no quoting (`""` is two
  characters), only the `\\t \\n \\r \\x \\s` escapes. A self-start ComfyUI backend whose
  command line ComfyUI's argparse would refuse (an `ExtraArgs: ""` adds an empty argument) is
  `errored`, as its process exits at once.
- `Network.PortCanChange` (default true: a taken port moves the server to the next one),
  `Network.RequiredAuthorization` with the `AuthBypassIPs` exemption (default loopback).
- `POST /API/<Route>` (case-insensitive) as API.HandleAsyncRequest checks it: a JSON content
  type and a Content-Length > 0, else 400 `basic_api`; a GET is redirected; a missing session id
  400 `basic_api`, an unknown one 401 `invalid_session_id`; an unknown route 400 `bad_route`; a
  `...WS` route over HTTP (or the reverse) 400 `bad_request_method`; handler errors (unknown
  model, bad init image, missing `images`) HTTP 200 `{"error"}`.
- `GetNewSession`; sessions persist in the data folder across a restart (`--no_persist` off).
- `GenerateText2Image` (HTTP: `images` less the discarded ones) and `GenerateText2ImageWS`: a
  status, `gen_progress`, flat image messages `{"image", "batch_index", "request_id",
  "metadata"}`, `keep_alive`, `discard_indices` (always), `socket_intention: close`, a 2 s wait,
  a final status, a normal close. Outputs are `View/local/raw/<date>/...` paths or `data:` URLs
  with `donotsave`; videos (`videomodel`) come out as `.mp4`/`.webm`/...
- Models scanned at start and by `TriggerRefresh` (which skips within 10 s of the last refresh or
  of the start), `ListModels` answered from that memory; every scanned folder gets a
  `model_metadata.ldb` (the shared-volume hazard). `ListBackends` with SwarmUI's fields,
  `GetCurrentStatus`, `GetGlobalStatus` with live/waiting counts; `SelectModel`, `InterruptAll`
  (the calling session's generations; with `other_sessions`, everyone's). A generation whose
  WebSocket closes runs on to the end, as nothing tells SwarmUI to stop it.
- `GET /View/...` serving files from the output folder.
- ASP.NET response compression (br, gzip) of JSON/text replies, chosen from the request's
  `Accept-Encoding` (see `aspnet_compression`).

Behaviour knobs (environment): FAKE_SWARMUI_START_DELAY (seconds before the port opens),
FAKE_SWARMUI_BACKEND_DELAY (seconds the backend reports `loading`), FAKE_SWARMUI_FAIL_START
(log an error and exit 1 at start), FAKE_SWARMUI_STEP_SECONDS (time per sampling step),
FAKE_SWARMUI_CRASH_WORD (a prompt containing it kills the process mid-generation),
FAKE_SWARMUI_VIDEO_BYTES (size of a video output), FAKE_SWARMUI_WS_CLOSE_WAIT (the 2 s wait),
FAKE_SWARMUI_REFRESH_DEBOUNCE (the 10 s), FAKE_SWARMUI_REFRESH_SECONDS (how long a refresh takes),
FAKE_SWARMUI_LONG_LOG_LINE (print one log line of that many bytes at start), FAKE_SWARMUI_LIB_DIR
and FAKE_SWARMUI_PIP_OFFLINE (SwarmUI's first-start pip installs), FAKE_SWARMUI_NO_GPU (ComfyUI fails
without `--cpu`). Prompt words:
FAKE_OUT_OF_ORDER (images finish last first), FAKE_DISCARD_FIRST (image 0 is discarded).

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
import socket
import struct
import sys
import time
import uuid
import zlib
from datetime import datetime
from pathlib import Path

from aiohttp import WSMsgType, web

VERSION = "0.9.8.2"
WS_ROUTES = {"generatetext2imagews"}
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


def log(msg: str, level: str = "Info") -> None:
    print(f"{datetime.now():%H:%M:%S.%f} [{level}] {msg}", flush=True)


# -- FDS, as FreneticUtilities parses it ------------------------------------------------------------------
# FreneticLLC/FreneticUtilities @6c5ab71 FreneticUtilities/FreneticDataSyntax/FDSParser.cs and FDSUtility.cs.


class FDSError(ValueError):
    """What FDSParser.Exception reports (FDSParser.cs:288-291)."""


def fds_unescape(text: str) -> str:
    """FDSUtility.UnEscape (FDSUtility.cs:183-190): only these five escapes, replaced one after the
    other; there is no quoting, so `""` stays the two characters `""`."""
    if "\\" in text:
        text = (text.replace("\\t", "\t").replace("\\n", "\n").replace("\\r", "\r").replace("\\x", "")
                .replace("\\s", "\\"))
    return text


def _fds_key(text: str) -> str:
    """FDSUtility.UnEscapeKey (FDSUtility.cs:195-201)."""
    if "\\" in text:
        text = fds_unescape(text.replace("\\d", ".").replace("\\c", ":").replace("\\e", "="))
    return text


def _fds_lines(text: str) -> list[str]:
    """FDSUtility.CleanFileData (FDSUtility.cs:107-114): CR/CRLF to LF, a tab is four spaces."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace(">\t", ">   ").replace("\t", "    ")
    return text.split("\n")


def _fds_error(num: int, line: str, reason: str) -> FDSError:
    return FDSError(f"[FDS Parsing error] Line {num + 1}: {reason}, from line as follows: {line}")


def _fds_value(sep: str, text: str, lines: list[str], num: int) -> object:
    """FDSParser.InterpretBasicObject (FDSParser.cs:126-143); values stay text here (as
    FDSUtility.InterpretType would give them back to AutoConfiguration's string fields)."""
    if sep == "=":
        try:
            return base64.b64decode(text, validate=True)
        except ValueError as exc:
            raise _fds_error(num, lines[num], f"Binary data ({text}) invalid - got FormatException {exc}") from None
    return text


def _fds_section(lines: list[str], start: int, spacing: int, section: dict) -> int:
    """FDSParser.ParseSection (FDSParser.cs:192-254); returns the index of the last line it used."""
    end = start - 1
    num = start
    while num < len(lines):
        full = lines[num]
        stripped = full.lstrip(" ")
        if not stripped:
            num += 1
            continue
        spaces = len(full) - len(stripped)
        line = stripped.rstrip(" ")
        if line[0] == "#":
            num += 1
            continue
        if spaces < spacing:
            return end
        if line[0] in "-=>":
            raise _fds_error(num, full, "Tried to build a list without a key - likely forgot to specify a key?")
        if spaces > spacing:
            raise _fds_error(num, full, f"Spacing grew for no reason (expected {spacing} but got {spaces}) - "
                                        "possibly forgot a key, or mixed up tabs?")
        sep_at = min((i for i in (line.find(":"), line.find("=")) if i >= 0), default=-1)
        if sep_at == -1:
            raise _fds_error(num, full, "Line inside general section has unknown purpose - are you missing a symbol?")
        key = line[:sep_at]
        if not key:
            raise _fds_error(num, full, "Empty key label - use '\\x' to create an intentionally empty key.")
        key = _fds_key(key)
        if sep_at == len(line) - 1:
            if line[sep_at] == "=":
                raise _fds_error(num, full, "Cannot create a binary subsection - use ':', or put the binary data "
                                            "on the same line.")
            value, num = _fds_subsection(lines, num, spacing)
        else:
            value = _fds_value(line[sep_at], fds_unescape(line[sep_at + 1:].lstrip(" ")), lines, num)
        section[key] = value
        end = num
        num += 1
    return end


def _fds_subsection(lines: list[str], start: int, spacing: int) -> tuple[object, int]:
    """FDSParser.ParseSubSection (FDSParser.cs:146-183): deeper lines are a section, lines starting
    with `-` at the same depth a list of plain values (complex `>` lists are not used by SwarmUI's
    settings and not supported here)."""
    for num in range(start + 1, len(lines)):
        full = lines[num]
        stripped = full.lstrip(" ")
        if not stripped or stripped[0] == "#":
            continue
        spaces = len(full) - len(stripped)
        if spaces > spacing:
            section: dict = {}
            return section, _fds_section(lines, start + 1, spaces, section)
        if spaces == spacing and stripped[0] in "-=":
            items, end = [], start
            for n in range(start + 1, len(lines)):
                item = lines[n].lstrip(" ")
                if not item or item[0] == "#":
                    continue
                if len(lines[n]) - len(item) != spacing or item[0] not in "-=":
                    break
                items.append(_fds_value(item[0], item[1:].strip(" "), lines, n))
                end = n
            return items, end
        break
    return {}, start


def parse_fds(text: str) -> dict:
    """FDSParser.Parse (FDSParser.cs:263-282): the whole file is one section at depth 0."""
    lines = _fds_lines(text)
    root: dict = {}
    end = _fds_section(lines, 0, 0, root)
    for num in range(end + 1, len(lines)):
        trimmed = lines[num].strip(" ")
        if trimmed and not trimmed.startswith("#"):
            raise _fds_error(num, lines[num], "Line inside root has unknown purpose - are you missing a symbol?")
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


def fds_bool(value: object, default: bool) -> bool:
    """AutoConfiguration's bool fields: FDSUtility.InterpretType (FDSUtility.cs:207-226) turns exactly
    `true`/`false` into booleans."""
    return {"true": True, "false": False}.get(value, default) if isinstance(value, str) else default


# -- ComfyUI's command line, as SwarmUI builds it and ComfyUI parses it -----------------------------------


def dotnet_split_args(arguments: str) -> list[str]:
    """How .NET on Linux turns `ProcessStartInfo.Arguments` into argv (dotnet/runtime
    src/libraries/System.Diagnostics.Process/src/System/Diagnostics/Process.Unix.cs,
    ParseArgumentsIntoList): blanks separate arguments, double quotes group (an empty pair is an
    empty argument), backslashes escape a quote."""
    args: list[str] = []
    i, n = 0, len(arguments)
    while i < n:
        while i < n and arguments[i] in " \t":
            i += 1
        if i >= n:
            break
        buf: list[str] = []
        quoted = False
        while i < n:
            c = arguments[i]
            if c == "\\":
                k = 0
                while i + k < n and arguments[i + k] == "\\":
                    k += 1
                if i + k < n and arguments[i + k] == '"':
                    buf.append("\\" * (k // 2))
                    if k % 2:
                        buf.append('"')
                        i += k + 1
                    else:
                        i += k
                else:
                    buf.append("\\" * k)
                    i += k
            elif c == '"':
                if quoted and i + 1 < n and arguments[i + 1] == '"':
                    buf.append('"')
                    i += 2
                else:
                    quoted = not quoted
                    i += 1
            elif c in " \t" and not quoted:
                break
            else:
                buf.append(c)
                i += 1
        args.append("".join(buf))
    return args


class ComfyArgsError(ValueError):
    pass


class _ComfyParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints this and exits 2; here the stand-in reports it
        raise ComfyArgsError(f"main.py: error: {message}")


def comfy_arg_parser() -> argparse.ArgumentParser:
    """The part of ComfyUI's command line (comfyanonymous/ComfyUI comfy/cli_args.py, `parser`, parsed
    with `parser.parse_args()` at import) that SwarmUI and operators use; anything else, or a stray
    positional argument such as an empty string, is refused, as argparse refuses it."""
    p = _ComfyParser(prog="main.py", add_help=False)
    p.add_argument("--listen", nargs="?", const="0.0.0.0,::")
    p.add_argument("--port", type=int)
    p.add_argument("--extra-model-paths-config", nargs="+", action="append")
    p.add_argument("--preview-method", choices=["none", "auto", "latent2rgb", "taesd"])
    p.add_argument("--front-end-version")
    p.add_argument("--front-end-root")
    p.add_argument("--fast", nargs="*", choices=["fp16_accumulation", "fp8_matrix_mult", "cublas_ops"])
    p.add_argument("--cuda-device", type=int)
    p.add_argument("--reserve-vram", type=float)
    p.add_argument("--verbose", nargs="?", const="DEBUG")
    for flag in ("--cpu", "--gpu-only", "--highvram", "--normalvram", "--lowvram", "--novram", "--cpu-vae",
                 "--disable-xformers", "--use-pytorch-cross-attention", "--use-sage-attention",
                 "--use-flash-attention", "--disable-smart-memory", "--cache-none", "--log-stdout",
                 "--disable-metadata", "--disable-auto-launch", "--dont-print-server", "--multi-user",
                 "--disable-all-custom-nodes", "--force-fp16", "--force-fp32", "--bf16-unet", "--fp16-vae"):
        p.add_argument(flag, action="store_true")
    return p


def comfy_launch_error(settings: dict, port: int, data_dir: Path) -> str | None:
    """Why SwarmUI's self-started ComfyUI would exit at once with these backend settings, or None.

    SwarmUI reads `ExtraArgs` raw from Backends.fds (an AutoConfiguration string, default empty),
    launches `<python> -s main.py ` + `ExtraArgs.Trim() + " --port {PORT}" + addedArgs`
    (mcmonkeyprojects/SwarmUI src/BuiltinExtensions/ComfyUIBackend/ComfyUISelfStartBackend.cs:24,
    347-385, 477; src/Backends/NetworkBackendUtils.cs:380-391), and ComfyUI's argparse exits 2 on
    anything it does not know."""
    added = f" --extra-model-paths-config {data_dir}/comfy-auto-model.yaml"
    previews = str(settings.get("EnablePreviews", "true"))
    if previews in ("true", "taesd"):
        added += f" --preview-method {'latent2rgb' if previews == 'true' else 'taesd'}"
    frontend = settings.get("FrontendVersion", "LatestSwarmValidated")
    if frontend in ("Latest", "LatestSwarmValidated", "Legacy"):
        added += " --front-end-version Comfy-Org/ComfyUI_frontend@latest"
    extra = settings.get("ExtraArgs", "")
    if not isinstance(extra, str):
        return f"ExtraArgs is a section, not text: {extra!r}"
    post = (extra.strip() + " --port {PORT}" + added).replace("{PORT}", str(port)).strip()
    try:
        comfy_arg_parser().parse_args(dotnet_split_args(post))
    except ComfyArgsError as exc:
        return str(exc)
    return None


# -- API plumbing --------------------------------------------------------------------------------------


SESSIONLESS_ROUTES = {"login", "getnewsession", "registerbasic", "registeroauth"}  # API.cs:22
BACKEND_TYPES = {"comfyui_selfstart"}


def _json_object(raw: str | bytes) -> dict | None:
    """JObject.Parse: anything but a JSON object fails (an internal_error in API.cs:189-197)."""
    try:
        body = json.loads(raw or b"null")
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _api_error(error_id: str, message: str) -> web.Response:
    return web.json_response({"error_id": error_id, "error": message}, status=400)


async def _reply(ws: web.WebSocketResponse | None, status: int, body: dict) -> web.StreamResponse:
    """context.YieldJsonOutput: over HTTP a status and JSON; over a WebSocket the JSON as a message."""
    if ws is None:
        return web.json_response(body, status=status)
    await ws.send_json(body)
    await ws.close()
    return ws


class SessionStore:
    """Session ids, kept in the data folder across restarts unless `--no_persist` (SwarmUI keeps them
    in its LiteDB for 31 days: mcmonkeyprojects/SwarmUI src/Accounts/SessionHandler.cs:23, 464-500).
    A JSON file stands in for the database."""

    def __init__(self, data_dir: Path, *, persist: bool):
        self.file = data_dir / "fake_sessions.json" if persist else None
        self.ids: set[str] = set()
        if self.file is not None and self.file.is_file():
            self.ids = set(json.loads(self.file.read_text()))

    def known(self, sid: str) -> bool:
        return sid in self.ids

    def new(self) -> str:
        sid = uuid.uuid4().hex.upper()
        self.ids.add(sid)
        if self.file is not None:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            self.file.write_text(json.dumps(sorted(self.ids)))
        return sid


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
        self.data_dir = Path(args.data_dir or "Data")
        self.settings: dict = {}
        settings_file = Path(args.settings_file or self.data_dir / "Settings.fds")
        if settings_file.exists():
            self.settings = parse_fds(settings_file.read_text())
        paths = self.settings.get("Paths", {})
        self.model_roots = [Path(p) for p in (paths.get("ModelRoot") or "Models").split(";") if p]
        self.output_dir = Path(paths.get("OutputPath") or "Output")
        net = self.settings.get("Network", {})
        self.required_auth = net.get("RequiredAuthorization", "")
        # Settings.cs:277-278 (default: loopback); WebServer.cs:192 splits on ',' without trimming.
        self.bypass_ips = net.get("AuthBypassIPs", "127.0.0.1,::1,::ffff:127.0.0.1").split(",")
        self.started = time.monotonic()
        self.backend_delay = float(os.environ.get("FAKE_SWARMUI_BACKEND_DELAY", "0"))
        self.step_seconds = float(os.environ.get("FAKE_SWARMUI_STEP_SECONDS", "0.01"))
        self.crash_word = os.environ.get("FAKE_SWARMUI_CRASH_WORD", "CRASH_SWARMUI")
        self.video_bytes = int(os.environ.get("FAKE_SWARMUI_VIDEO_BYTES", "4096"))
        # GenerateText2ImageWS waits 2 s after `socket_intention: close` (src/WebAPI/T2IAPI.cs:141-142).
        self.close_wait = float(os.environ.get("FAKE_SWARMUI_WS_CLOSE_WAIT", "2"))
        # TriggerRefresh skips a refresh within 10 s of the last one, or of the start (T2IAPI.cs:991, 1008).
        self.refresh_debounce = float(os.environ.get("FAKE_SWARMUI_REFRESH_DEBOUNCE", "10"))
        self.refresh_seconds = float(os.environ.get("FAKE_SWARMUI_REFRESH_SECONDS", "0"))
        self.live_gens = 0
        self.waiting_gens = 0
        self.last_used: float | None = None  # when a generation last ended (BackendData.TimeLastRelease)
        self.counter = 0
        self.request_ids = 0
        self.interrupt_generation = 0  # bumped by InterruptAll with other_sessions
        self.session_interrupts: dict[str, int] = {}  # bumped per session by InterruptAll without
        self.request_log: list[dict] = []
        self.sessions = SessionStore(self.data_dir, persist=not fds_bool(args.no_persist, False))
        self.backends = self.load_backends(Path(args.backends_file or self.data_dir / "Backends.fds"))
        self.refresh_lock = asyncio.Lock()
        self.last_refreshed = time.monotonic()
        self.models = {subtype: self.scan_models(subtype) for subtype in SUBTYPE_FOLDERS}

    # -- backends (src/Backends/BackendHandler.cs:508-553, src/WebAPI/BackendAPI.cs:53-79) -------------------------------------------

    def load_backends(self, path: Path) -> list[dict]:
        """Backends.fds: no file, no backends; an unreadable file is logged and gives none either;
        a section of an unknown type is skipped (BackendHandler.cs:512-536)."""
        if not path.exists():
            return []
        try:
            sections = parse_fds(path.read_text())
        except FDSError as exc:
            log(f"Could not read Backends save file: {exc}", "Error")
            return []
        backends = []
        for idstr, section in sections.items():
            if not isinstance(section, dict) or section.get("type") not in BACKEND_TYPES:
                log(f"Unknown backend type '{section.get('type') if isinstance(section, dict) else None}' "
                    f"in save file, skipping backend #{idstr}.", "Error")
                continue
            settings = section.get("settings") if isinstance(section.get("settings"), dict) else {}
            backend = {"id": int(idstr), "type": section["type"], "title": section.get("title", ""),
                       "enabled": fds_bool(section.get("enabled"), True), "settings": settings, "error": None}
            if backend["enabled"] and not str(settings.get("StartScript", "")).strip(" \"'\n\r\t"):
                backend["error"] = "disabled"  # empty start script (ComfyUISelfStartBackend.cs:386-392)
            elif backend["enabled"]:
                self.lib_fixes(backend["id"])
                port = 7820 + backend["id"]  # Network.BackendStartingPort (Settings.cs:269)
                failure = comfy_launch_error(settings, port, self.data_dir)
                if not failure and os.environ.get("FAKE_SWARMUI_NO_GPU") and "--cpu" not in dotnet_split_args(
                        str(settings.get("ExtraArgs", ""))):
                    # comfyanonymous/ComfyUI comfy/model_management.py get_torch_device: torch.cuda without a GPU
                    failure = "AssertionError: Torch not compiled with CUDA enabled / no NVIDIA driver found"
                if failure:
                    backend["error"] = "errored"
                    log(f"[ComfyUI-{idstr}] {failure}", "Error")
                    log(f"Self-Start ComfyUI-{idstr} on port {port} failed. AutoRestart ignored as this "
                        "was an initial launch failure.", "Error")
            backends.append(backend)
        return backends

    def debug(self, message: str) -> None:
        """Logs.Debug: printed only at `--loglevel Debug` or Verbose (mcmonkeyprojects/SwarmUI
        src/Utils/Logs.cs:116-119, 221-229)."""
        if self.args.loglevel.lower() in ("debug", "verbose"):
            log(message, "Debug")

    def lib_fixes(self, backend_id: int) -> None:
        """ComfyUISelfStartBackend.DoLibFixes (ComfyUISelfStartBackend.cs:95-133, 480-540): before each
        start, pip-install what the ComfyUI environment lacks, each reported as a load status
        (AbstractBackend.cs:61-63). FAKE_SWARMUI_LIB_DIR stands for the environment's site-packages;
        with FAKE_SWARMUI_PIP_OFFLINE the installs fail (no internet), and SwarmUI starts anyway."""
        lib = os.environ.get("FAKE_SWARMUI_LIB_DIR")
        if not lib:
            return
        for package in ("rembg", "onnxruntime", "ultralytics"):
            if (Path(lib) / package).is_dir():
                continue
            status = f"[Load ComfyUI Self-Starting #{backend_id}] "
            self.debug(f"{status}Installing '{package}' for ComfyUI...")
            if os.environ.get("FAKE_SWARMUI_PIP_OFFLINE"):
                log(f"ComfyUI (Installing '{package}'): ERROR: Could not find a version that satisfies the "
                    f"requirement {package} (from versions: none)")
            else:
                (Path(lib) / package).mkdir(parents=True, exist_ok=True)
            self.debug(f"{status}Done Installing '{package}' for ComfyUI.")

    def status_of(self, backend: dict) -> str:
        if not backend["enabled"]:
            return "disabled"
        if backend["error"]:
            return backend["error"]
        return "running" if time.monotonic() - self.started >= self.backend_delay else "loading"

    def backend_status(self) -> str:
        states = {self.status_of(b) for b in self.backends}
        for state in ("running", "loading", "errored"):
            if state in states:
                return state
        return "disabled"

    def status_body(self) -> dict:
        loading = self.backend_status() == "loading"
        return {
            "status": {"waiting_gens": self.waiting_gens, "loading_models": 0,
                       "waiting_backends": 1 if loading and self.live_gens else 0, "live_gens": self.live_gens},
            "backend_status": {"status": self.backend_status(), "class": "", "message": "",
                               "any_loading": loading},
            "supported_features": ["comfyui", "video"],
        }

    # -- models: scanned at start and by TriggerRefresh, listed from memory (src/WebAPI/ModelsAPI.cs:174-240) -----------

    def scan_models(self, subtype: str) -> dict[str, dict]:
        files: dict[str, dict] = {}
        for root in self.model_roots:
            for folder in SUBTYPE_FOLDERS[subtype]:
                base = root / folder
                if not base.is_dir():
                    continue
                for dirpath, _dirnames, filenames in os.walk(base, followlinks=True):
                    rel_dir = Path(dirpath).relative_to(base).as_posix()
                    rel_dir = "" if rel_dir == "." else rel_dir
                    # SwarmUI keeps a metadata cache in every folder it scans.
                    (Path(dirpath) / "model_metadata.ldb").write_bytes(b"LDB fake metadata cache\n")
                    for fn in filenames:
                        if fn.lower().endswith(MODEL_EXTS):
                            name = f"{rel_dir}/{fn}".lstrip("/")
                            files.setdefault(name, {"name": name, "title": Path(fn).stem, "local": True,
                                                    "architecture": None, "loaded": False,
                                                    "time_modified": int((Path(dirpath) / fn).stat().st_mtime)})
        return files

    def find_model(self, name: str) -> dict | None:
        wanted = name.replace("\\", "/").strip("/")
        known = self.models["Stable-Diffusion"]
        return known.get(wanted) or next((known[wanted + ext] for ext in MODEL_EXTS if wanted + ext in known), None)

    def list_models(self, subtype: str, path: str, depth: int) -> tuple[list[str], list[dict]]:
        depth = max(1, min(20, depth))  # ModelsAPI.cs:191
        path = path.replace("\\", "/")
        path = re.sub("/+", "/", path + "/" if path else "").lstrip("/")
        folders: set[str] = set()
        files = []
        for name, entry in sorted(self.models.get(subtype, {}).items()):
            if not name.startswith(path) or len(name) <= len(path):
                continue
            part = name[len(path):]
            subfolders = part.split("/")[:-1]
            for i in range(1, min(depth, len(subfolders)) + 1):
                folders.add("/".join(subfolders[:i]))
            if len(subfolders) < depth:
                files.append(entry)
        return sorted(folders), files

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
        """Network.RequiredAuthorization (mcmonkeyprojects/SwarmUI src/Core/WebServer.cs:180-208)."""
        self.request_log.append({"path": request.path, "method": request.method, "headers": dict(request.headers),
                                 "remote": request.remote})
        del self.request_log[:-200]
        if request.path.startswith("/__fake__/"):
            return await handler(request)
        remote = request.remote or ""
        if remote.startswith("::ffff:"):
            remote = remote[len("::ffff:"):]
        if self.required_auth.strip() and request.headers.get("Authorization") != self.required_auth:
            if remote not in self.bypass_ips:
                return web.Response(status=401, text="Unauthorized")
        return await handler(request)

    # -- routes --------------------------------------------------------------------------------------------

    async def api(self, request: web.Request) -> web.StreamResponse:
        """API.HandleAsyncRequest (mcmonkeyprojects/SwarmUI src/WebAPI/API.cs:41-198), in its order:
        body checks, session, route, HTTP/WebSocket match; framework errors are HTTP 400 with an
        `error_id` (an unknown session 401), handler errors HTTP 200 `{"error"}`."""
        route = request.match_info["route"].lower()
        ws = None
        if request.headers.get("Upgrade", "").lower() == "websocket":
            ws = web.WebSocketResponse(max_msg_size=0)
            await ws.prepare(request)
            msg = await ws.receive()
            body = _json_object(msg.data) if msg.type == WSMsgType.TEXT else None
        elif request.method == "POST":
            if request.content_type != "application/json" and not request.content_type.endswith("+json"):
                return _api_error("basic_api", "Wrong content type")  # API.cs:74-78
            length = request.content_length
            if length is None or length <= 0:
                return _api_error("basic_api", "bad content length")  # API.cs:80-84
            body = _json_object(await request.read())
        else:
            raise web.HTTPFound("/Error/NoGetAPI")  # API.cs:89-93
        if body is None:
            return await _reply(ws, 400, {"error_id": "internal_error", "error": "An internal error occurred"})
        sid = None
        if route not in SESSIONLESS_ROUTES:  # API.cs:101-121
            sid = body.get("session_id") or request.headers.get("X-Session-ID")
            if not sid:
                return await _reply(ws, 400, {"error_id": "basic_api", "error": "missing session id"})
            if not self.sessions.known(str(sid)):
                return await _reply(ws, 401, {"error": "Invalid session ID. You may need to refresh the page.",
                                              "error_id": "invalid_session_id"})
        handler = getattr(self, f"route_{route}", None)
        if handler is None and route not in WS_ROUTES:  # API.cs:122-133
            return await _reply(ws, 404 if ws else 400, {"error": "Unknown API route" + ("." if ws else ""),
                                                         "error_id": "bad_route"})
        if (route in WS_ROUTES) != (ws is not None):  # API.cs:134-145
            return await _reply(ws, 400, {"error": "Invalid request method for this route.",
                                          "error_id": "bad_request_method"})
        if ws is not None:
            await self.generate_ws(ws, body)
            await ws.close()
            return ws
        return web.json_response(await handler(body))

    async def route_getnewsession(self, body: dict) -> dict:
        return {"session_id": self.sessions.new(), "user_id": "local", "output_append_user": True,
                "version": VERSION, "server_id": "fake-server", "permissions": ["*"]}

    async def route_listmodels(self, body: dict) -> dict:
        if "depth" not in body:
            return {"error": "Missing required parameter 'depth'."}
        subtype = body.get("subtype") or "Stable-Diffusion"
        if subtype not in SUBTYPE_FOLDERS and subtype != "Wildcards":
            return {"error": "Invalid sub-type."}
        async with self.refresh_lock:  # the refresh lock's read claim (ModelsAPI.cs:225)
            folders, files = self.list_models(subtype, body.get("path") or "", int(body["depth"]))
        return {"folders": folders, "files": files}

    async def route_listbackends(self, body: dict) -> dict:
        """BackendAPI.BackendToNet (src/WebAPI/BackendAPI.cs:53-79): the fields a remote Swarm reads
        (`can_load_models`, `max_usages`, `current_model`: src/Backends/SwarmSwarmBackend.cs:270, 278-279)."""
        now = time.monotonic()
        return {str(b["id"]): {
            "type": b["type"], "status": self.status_of(b), "id": b["id"], "settings": b["settings"],
            "modcount": 0, "features": ["comfyui", "video"], "enabled": b["enabled"], "title": b["title"],
            "max_usages": 0, "seconds_since_used": int(now - self.last_used) if self.last_used else 0,
            "time_since_used": f"{int(now - self.last_used)} seconds ago" if self.last_used else "Never",
            "can_load_models": True,
            **({"current_model": None} if body.get("full_data") else {}),
        } for b in self.backends}

    async def route_getcurrentstatus(self, body: dict) -> dict:
        return self.status_body()

    async def route_getglobalstatus(self, body: dict) -> dict:
        return self.status_body()

    async def route_selectmodel(self, body: dict) -> dict:
        if not self.find_model(str(body.get("model", ""))):
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
        """T2IAPI.TriggerRefresh (T2IAPI.cs:1002-1044): skipped within the debounce window, else the
        models are rescanned under the refresh write lock; answers with the parameter listing."""
        strong = str(body.get("strong", "true")).lower() != "false"
        if strong and not self.refresh_lock.locked() and time.monotonic() - self.last_refreshed >= self.refresh_debounce:
            async with self.refresh_lock:
                await asyncio.sleep(self.refresh_seconds)
                self.models = {subtype: self.scan_models(subtype) for subtype in SUBTYPE_FOLDERS}
                self.last_refreshed = time.monotonic()
        return {"list": [], "groups": [], "models": {k: sorted(v) for k, v in self.models.items()}, "wildcards": []}

    async def route_generatetext2image(self, body: dict) -> dict:
        """T2IAPI.GenerateText2Image (T2IAPI.cs:160-189): the first error, or the images by batch index
        less the discarded ones."""
        outputs: dict[int, str] = {}
        discards: list[int] = []
        error: dict | None = None

        async def sink(event: dict) -> None:
            nonlocal error
            if "error" in event and error is None:
                error = event
            elif "image" in event:
                outputs[int(event["batch_index"])] = event["image"]
            elif "discard_indices" in event:
                discards.extend(event["discard_indices"])

        await self.run_generation(body, sink)
        if error is not None:
            return error
        return {"images": [ref for index, ref in outputs.items() if index not in discards]}

    async def generate_ws(self, ws: web.WebSocketResponse, body: dict) -> None:
        """T2IAPI.GenerateText2ImageWS (T2IAPI.cs:80-150): the generation's messages, then
        `socket_intention: close`, a 2 s wait for another request, a final status; API.cs:179 closes normally."""
        async def sink(event: dict) -> None:
            if not ws.closed:
                try:
                    await ws.send_json(event)
                except ConnectionError:  # the client went away; the generation runs on
                    pass

        await self.run_generation(body, sink)
        await sink({"socket_intention": "close"})
        await asyncio.sleep(self.close_wait)
        await sink(self.status_body())

    async def run_generation(self, body: dict, emit) -> None:
        """T2IAPI.GenT2I_Internal (T2IAPI.cs:254-470): a status, per image `gen_progress` then a flat
        `{"image", "batch_index", "request_id", "metadata"}` (T2IAPI.cs:373), `keep_alive` while
        waiting on tasks (T2IAPI.cs:425-430), always `discard_indices` at the end (T2IAPI.cs:468)."""
        try:
            images = int(body["images"])
        except (KeyError, TypeError, ValueError):
            await emit({"error": "Invalid or missing parameter 'images'."})
            return
        model = str(body.get("model") or "")
        if model and not self.find_model(model):
            await emit({"error": f"Invalid model name '{model}': model not found."})
            return
        videomodel = str(body.get("videomodel") or "")
        if videomodel and not self.find_model(videomodel):
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
        await emit(self.status_body())
        if self.backend_status() not in ("running", "loading"):
            await emit({"error": "No backends are available to generate with."})
            await emit({"discard_indices": []})
            return
        if self.backend_status() != "running":
            self.waiting_gens += 1
            while self.backend_status() != "running":
                await asyncio.sleep(0.05)
            self.waiting_gens -= 1
        steps = int(body.get("videosteps") or body.get("steps") or 20) if videomodel else int(body.get("steps") or 20)
        prompt = str(body.get("prompt") or "")
        sid = str(body.get("session_id"))
        self.request_ids += 1
        request_id = str(self.request_ids)
        interrupt_mark = (self.interrupt_generation, self.session_interrupts.get(sid, 0))
        discard: list[int] = []
        # A prompt word stands in for extensions that run images in parallel (out of order) or refuse
        # them afterwards (e.g. a scoring extension: T2IAPI.cs:352-362).
        order = list(range(images))[::-1] if "FAKE_OUT_OF_ORDER" in prompt else list(range(images))
        self.live_gens += 1
        try:
            for position, index in enumerate(order):
                for step in range(steps):
                    await asyncio.sleep(self.step_seconds)
                    if self.crash_word and self.crash_word in prompt and step >= steps // 2:
                        log("Backend crashed: simulated fatal error in sampler (CUDA error: an illegal memory access)", "Error")
                        os._exit(134)
                    if (self.interrupt_generation, self.session_interrupts.get(sid, 0)) != interrupt_mark:
                        break
                    overall = (position * steps + step + 1) / (images * steps)
                    await emit({"gen_progress": {"batch_index": str(index), "request_id": request_id,
                                                 "overall_percent": round(overall, 4),
                                                 "current_percent": round((step + 1) / steps, 4),
                                                 "preview": "data:image/jpeg;base64,/9j/AA=="}})
                else:
                    seed = int(body.get("seed", -1))
                    seed = seed + index if seed >= 0 else self.counter + index
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
                    await emit({"image": ref, "batch_index": str(index), "request_id": request_id, "metadata": meta})
                    if "FAKE_DISCARD_FIRST" in prompt and index == 0:
                        discard.append(index)
                    continue
                break  # interrupted
            await emit({"keep_alive": True})
            await emit({"discard_indices": discard})
        finally:
            self.live_gens -= 1
            self.last_used = time.monotonic()

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
    """Minimal Settings.fds and Backends.fds for running the stand-in on its own (the worker writes its
    own). An empty `bypass_ips` is written as FDS writes an empty string, `\\x`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    lines = ["IsInstalled: true", "Paths:", f"\tModelRoot: {model_root}", f"\tOutputPath: {output_dir}", "Network:"]
    if required_auth:
        lines.append(f"\tRequiredAuthorization: {required_auth}")
    if bypass_ips is not None:
        lines.append("\tAuthBypassIPs: " + (bypass_ips or "\\x"))
    (data_dir / "Settings.fds").write_text("\n".join(lines) + "\n")
    (data_dir / "Backends.fds").write_text("0:\n\ttype: comfyui_selfstart\n\ttitle: ComfyUI\n\tenabled: true\n"
                                           "\tsettings:\n\t\tStartScript: dlbackend/ComfyUI/main.py\n")


def port_taken(host: str, port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="SwarmUI API stand-in for tests")
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=7801)
    parser.add_argument("--launch_mode", default="webinstall")
    parser.add_argument("--data_dir")
    parser.add_argument("--settings_file")
    parser.add_argument("--backends_file")
    parser.add_argument("--loglevel", default="Info")
    parser.add_argument("--no_persist", default="false")
    args, _unknown = parser.parse_known_args(argv)
    log(f"=== SwarmUI v{VERSION} Starting (fake) ===")
    long_line = int(os.environ.get("FAKE_SWARMUI_LONG_LOG_LINE", "0"))
    if long_line:  # e.g. a ComfyUI traceback or a model listing on one line
        print(f"{datetime.now():%H:%M:%S.%f} [Debug] " + "x" * long_line, flush=True)
    delay = float(os.environ.get("FAKE_SWARMUI_START_DELAY", "0"))
    if delay:
        log(f"Loading settings, extensions and models (simulated {delay}s)...")
        time.sleep(delay)
    if os.environ.get("FAKE_SWARMUI_FAIL_START"):
        log("Failed to load settings: simulated startup failure", "Error")
        log("SwarmUI cannot start", "Error")
        sys.exit(1)
    fake = FakeSwarm(args)
    log(f"Model roots: {';'.join(str(r) for r in fake.model_roots)}; output: {fake.output_dir}")
    port = args.port
    # Network.PortCanChange, true by default (mcmonkeyprojects/SwarmUI src/Core/Settings.cs:266):
    # a taken port silently moves SwarmUI to the next one (src/Core/Program.cs:775-786).
    if fds_bool(fake.settings.get("Network", {}).get("PortCanChange"), True):
        while port_taken(args.host, port):
            port += 1
        if port != args.port:
            log(f"Port {args.port} was taken, using {port} instead.")
    log(f"SwarmUI v{VERSION} is now running at http://{args.host}:{port}")
    try:
        web.run_app(fake.app(), host=args.host, port=port, print=None, access_log=None)
    except OSError as exc:
        log(f"Failed to start the web server on port {port}: {exc}", "Error")
        sys.exit(1)


if __name__ == "__main__":
    main()
