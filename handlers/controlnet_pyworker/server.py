"""The model server: `python -m handlers.controlnet_pyworker.server`.

FastAPI + uvicorn; settings from `settings.Settings` (docs/controlnet-pyworker.md#environment).
It listens on 127.0.0.1:5001 by default: only the PyWorker front on the same instance calls it,
and on vast.ai every EXPOSEd or published port is public. Binding beyond loopback needs
MODEL_SERVER_TOKEN (the server refuses to start without it); then every route but /ping needs
`Authorization: Bearer <token>`. The body limit (MAX_BODY_BYTES) is enforced while reading (413).

Routes: POST /generate (its body and answers in /docs), GET /ping, GET /models, GET /checkhealth.

MODEL_LOG (`model_log.ModelLog`) gets the ready line after the preload and a fatal line
(`MODEL_SERVER_FATAL <cause>: <detail>`) when the preload fails (a download, CUDA unusable under
REQUIRE_CUDA=1, ...), the server cannot start, or a CUDA error leaves the device unusable.

Everything sized by the client (parsing, validation, error texts and their redaction, the
response's JSON) runs on a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
from typing import Any

from fastapi import Request  # module level: FastAPI resolves the route annotation from globals

from common.jobs import JobError, error_result, worker_version
from common.redaction import configure_logging, register_env_secrets
from handlers.controlnet_pyworker.engine_holder import EngineHolder
from handlers.controlnet_pyworker.model_log import READY_MARKER, ModelLog
from handlers.controlnet_pyworker.settings import Settings

log = logging.getLogger("controlnet.server")

STATUS_BY_CODE = {"invalid_input": 422, "download_failed": 502, "upload_failed": 502, "timeout": 504,
                  "cancelled": 499, "engine_failed": 500, "internal": 500, "unsafe_archive": 422}


async def _stop_when_disconnected(request: Request, stop: threading.Event, poll: float = 0.25) -> None:
    """Set `stop` when the client goes away (the PyWorker gave up on the request, a caller timed out),
    so its generation ends at the next step and the queue moves on."""
    while not await request.is_disconnected():
        await asyncio.sleep(poll)
    stop.set()


class State:
    def __init__(self, settings: Settings | None = None) -> None:
        from handlers.controlnet_pyworker import manifest

        self.settings = settings or Settings.from_env()
        self.started = time.monotonic()
        self.manifest = manifest.load(settings=self.settings)
        self.models_dir = self.settings.models_dir
        self.model_log = ModelLog(self.settings.model_log)
        self.preload = self.settings.preload_variant(self.manifest.default_variant)
        self.ready = False
        self.last_error: dict | None = None
        self.fatal_written = False
        self.engines = EngineHolder(self.settings, self.manifest)

    @property
    def engine(self):
        return self.engines.get()

    def record_error(self, where: str, message: str) -> None:
        self.last_error = {"where": where, "message": message, "at": time.time()}


def _wait_listening(host: str, port: int, timeout: float = 60.0) -> None:
    target = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((target, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)


def _preload(state: State, host: str, port: int) -> None:
    """Load PRELOAD_MODEL, wait until the port listens, then write the ready line (or the fatal one)."""
    try:
        if state.preload:
            if state.preload not in state.manifest.variants:
                raise JobError("invalid_input", f"PRELOAD_MODEL: unknown variant '{state.preload}'")
            state.engine.get(state.preload)
        else:
            state.engine  # noqa: B018 - import torch/diffusers now, not on the first request
        _wait_listening(host, port)
        state.ready = True
        state.model_log.marker(READY_MARKER, f"preload={state.preload or 'none'} device={state.engine.device} "
                                             f"port={port}")
        log.info("ready (preload=%s)", state.preload)
    except Exception as exc:
        msg = str(exc) if isinstance(exc, JobError) else f"{type(exc).__name__}: {exc}"
        log.exception("preload failed")
        state.record_error("preload", msg)
        state.model_log.fatal("preload failed", f"variant '{state.preload}': {msg}")


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (`BodyTooLarge`) as soon as it is known to pass `limit`: from
    Content-Length before reading anything, else once the stream has delivered more."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise BodyTooLarge
    return bytes(buf)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_settings(settings: Settings) -> tuple[str, int, str | None]:
    """(host, port, token); beyond loopback a token is required."""
    host, port, token = settings.host, settings.port, settings.token
    if not is_loopback(host) and not token:
        raise ValueError(f"MODEL_SERVER_HOST={host} listens beyond loopback: set MODEL_SERVER_TOKEN (clients then "
                         "send `Authorization: Bearer <token>`), or leave MODEL_SERVER_HOST unset (127.0.0.1)")
    return host, port, token


def _admit(state: State, body: bytes, request_id: str | None):
    """Parse, validate and take a queue place (on a worker thread: all of it is sized by the client).

    Returns `(job, request, ticket, None)`, `request` the validated body, or
    `(None, None, None, (status, body, headers))` for a refusal."""
    from handlers.controlnet_pyworker import schema
    from handlers.controlnet_pyworker.engine import QueueFull

    def refusal(exc: BaseException, status: int | None = None):
        out = error_result(exc)
        out["worker_version"] = worker_version()
        return None, None, None, (status or STATUS_BY_CODE.get(out["error_code"], 500), out, None)

    try:
        raw = json.loads(body or b"null")
    except RecursionError:
        return refusal(JobError("invalid_input", "body: JSON nested too deeply", ["body: JSON nested too deeply"]))
    except ValueError:
        return refusal(JobError("invalid_input", "body: not valid JSON", ["body: not valid JSON"]))
    try:
        req = schema.validate(raw, state.manifest, state.settings)  # 422 before it takes a queue place
        ticket = state.engine.queue.admit()
    except JobError as exc:
        return refusal(exc)
    except QueueFull as exc:
        return None, None, None, (429, {"error": f"queue_full: {exc}", "error_code": "queue_full",
                                        "retry_after": exc.retry_after}, {"Retry-After": str(exc.retry_after)})
    if not (request_id and len(request_id) <= 128):
        request_id = f"http-{time.time_ns()}"
    return {"id": request_id, "input": raw}, req, ticket, None


def _run(state: State, job: dict, req, ticket, stop: threading.Event) -> tuple[int, bytes]:
    """Generate and deliver (worker thread): the status and the response's JSON bytes."""
    from handlers.controlnet_pyworker import service

    out = service.respond(job, state.engine, ticket=ticket, stop=stop, request=req)
    if "error" in out:
        status = STATUS_BY_CODE.get(out.get("error_code"), 500)
        if status >= 500:
            state.record_error("generate", out["error"])
        if state.engine.broken and not state.fatal_written:  # the instance is no use any more
            state.fatal_written = True
            state.model_log.fatal("device unusable", state.engine.broken)
        state.model_log.write(f"generate failed status={status} code={out.get('error_code')}")
    else:
        status = 200
        state.model_log.write(f"generate ok model={out['model']} steps={out['steps']} workload={out['workload']} "
                              f"seconds={out['timings'].get('total')}")
    return status, json.dumps(out).encode()


def create_app(state: State | None = None, *, preload: bool = True, host: str = "127.0.0.1", port: int = 5001,
               token: str | None = None):
    """The FastAPI app; with `token`, every route but /ping needs `Authorization: Bearer <token>`."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse, Response

    state = state or State()

    @asynccontextmanager
    async def lifespan(app):
        state.model_log.write(f"model server starting (worker {worker_version()}, manifest {state.manifest.source})")
        if preload:
            threading.Thread(target=_preload, args=(state, host, port), daemon=True, name="preload").start()
        yield

    app = FastAPI(title="controlnet-pyworker model server", lifespan=lifespan)
    app.state.cn = state

    if token:
        expected = f"Bearer {token}".encode()

        @app.middleware("http")
        async def require_token(request: Request, call_next):
            given = request.headers.get("authorization", "").encode()
            if request.url.path == "/ping" or hmac.compare_digest(given, expected):
                return await call_next(request)
            return JSONResponse({"error": "unauthorized: send `Authorization: Bearer <MODEL_SERVER_TOKEN>`",
                                 "error_code": "unauthorized"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})

    @app.post("/generate", openapi_extra=REQUEST_BODY_DOC, responses=RESPONSES_DOC)
    async def generate(request: Request):
        """Generate images: the body is read here (its size capped while it streams) and validated
        on a worker thread, so FastAPI does not parse it; `/docs` shows it from `REQUEST_BODY_DOC`."""
        try:
            body = await read_body(request, state.settings.body_limit)
        except BodyTooLarge:
            detail = f"body: larger than the {state.settings.body_limit} bytes allowed"
            return JSONResponse({"error": f"invalid_input: {detail}", "error_code": "invalid_input",
                                 "details": [detail], "worker_version": worker_version()}, status_code=413,
                                headers={"Connection": "close"})
        job, req, ticket, refused = await run_in_threadpool(_admit, state, body,
                                                            request.headers.get("x-request-id"))
        del body
        if refused:
            status, out, headers = refused
            return JSONResponse(out, status_code=status, headers=headers)
        stop = threading.Event()
        watcher = asyncio.create_task(_stop_when_disconnected(request, stop))
        try:
            status, payload = await run_in_threadpool(_run, state, job, req, ticket, stop)
        finally:
            watcher.cancel()
            ticket.release()
        return Response(payload, status_code=status, media_type="application/json")

    @app.get("/ping")
    async def ping():
        return {"status": "ok", "ready": state.ready}

    @app.get("/models")
    async def models():
        from handlers.controlnet_pyworker import fetch

        m = state.manifest
        loaded = state.engines.current.loaded() if state.engines.current else []
        return {
            "default": m.default_variant,
            "variants": {
                n: {"steps": v.steps, "cfg": v.cfg, "scheduler": v.scheduler, "description": v.description,
                    "loaded": n in loaded,
                    "on_disk": not fetch.missing_files(m.components_for(n, eras=False), state.models_dir)}
                for n, v in m.variants.items()},
            "eras": {n: {"weight": e.weight, "prompt_prefix": e.prompt_prefix,
                         "on_disk": fetch.on_disk(m.components[e.lora], state.models_dir)}
                     for n, e in m.eras.items()},
            "schedulers": ["auto", "euler", "dpm_sde"],
            "auto_depth": bool(m.depth_estimator),
            "manifest": m.source,
        }

    @app.get("/checkhealth")
    async def checkhealth():
        return await run_in_threadpool(_health, state)

    _document_request_body(app)
    return app


REQUEST_BODY_DOC = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/GenerateRequest"}}}}}


def _responses_doc() -> dict:
    from common.result_models import ErrorResult
    from handlers.controlnet_pyworker.responses import GenerateResponse

    codes = {401: "MODEL_SERVER_TOKEN is set and the request lacks it", 413: "the body is larger than MAX_BODY_BYTES",
             422: "invalid input, every bad field named", 429: "the queue is full (see Retry-After)",
             499: "the client went away (model log only)", 500: "the engine failed",
             502: "a model file could not be fetched, or every upload method failed"}
    return {200: {"model": GenerateResponse, "description": "the images (base64) or their upload record"},
            **{code: {"model": ErrorResult, "description": why} for code, why in codes.items()}}


RESPONSES_DOC = _responses_doc()


def _document_request_body(app) -> None:
    """Add GenerateRequest (and the models it uses) to the OpenAPI components the route refers to."""
    from handlers.controlnet_pyworker.schema import GenerateRequest

    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            doc = build()
            request = GenerateRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components = doc.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in request.pop("$defs", {}).items():
                components.setdefault(name, definition)
            components["GenerateRequest"] = request
        return app.openapi_schema

    app.openapi = openapi


def _health(state: State) -> dict[str, Any]:
    import psutil

    vm = psutil.virtual_memory()
    out: dict[str, Any] = {
        "status": ("unusable" if state.engines.current is not None and state.engines.current.broken
                   else "ok" if state.ready and not state.last_error
                   else "loading" if not state.ready else "degraded"),
        "ready": state.ready,
        "preload": state.preload or "none",
        "uptime_s": round(time.monotonic() - state.started, 1),
        "ram": {"total_mb": vm.total // 2**20, "available_mb": vm.available // 2**20,
                "process_rss_mb": psutil.Process().memory_info().rss // 2**20},
        "gpu": None,
        "loaded": [],
        "queue_depth": 0,
        "last_error": state.last_error,
        "worker_version": worker_version(),
    }
    eng = state.engines.current
    if eng is not None:
        out.update(loaded=eng.loaded(), queue_depth=eng.queue.pending, max_queue=eng.queue.max_waiting,
                   device=eng.device, stats=dict(eng.stats))
        if eng.device.startswith("cuda"):
            import torch

            free, total = torch.cuda.mem_get_info()
            out["gpu"] = {"name": torch.cuda.get_device_name(), "total_mb": total // 2**20,
                          "free_mb": free // 2**20, "allocated_mb": torch.cuda.memory_allocated() // 2**20}
    return out


def main() -> None:
    import uvicorn

    register_env_secrets(["MODEL_SERVER_TOKEN"])
    settings = Settings()   # the defaults until the environment is read: where a fatal line goes
    try:
        settings = Settings.from_env()
        configure_logging(settings.log_level)
        host, port, token = bind_settings(settings)
        state = State(settings)
    except Exception as exc:  # e.g. an unreadable manifest: tell the PyWorker, then stop
        configure_logging(settings.log_level)
        log.error("model server cannot start: %s", exc, exc_info=not isinstance(exc, ValueError))
        ModelLog(settings.model_log).fatal("cannot start", str(exc))
        raise SystemExit(1) from None
    app = create_app(state, host=host, port=port, token=token)
    uvicorn.run(app, host=host, port=port, log_level=settings.log_level.lower(), access_log=False)


if __name__ == "__main__":
    main()
