"""vast.ai serverless, worker side: SwarmUI + the gateway, and the loopback "model server" that vast's
PyWorker (handlers.swarm_worker.vast, in its own venv) forwards its verified requests to.

    python -m handlers.swarm_worker.lease_control      (images/swarm-worker/start.sh, vast serverless mode)

HartsyAI's CloudBackends ("Vast.ai Serverless" section) leases a worker as a vast *session*: `/route/`,
then `/session/create` on the PyWorker (one session per worker), then `/lease` with the session id,
which must answer `{success, public_url, token, protocol: 2}` (its VastAIProvider.cs `ApplyLease`); it
repeats `/lease` to renew and ends with `/session/end`. Routes here (127.0.0.1 only):

- `POST /lease {"session_id"}`: the first call for a session opens a lease (waits for SwarmUI) and
  answers with the gateway's https address and the lease's token; later calls answer the same lease.
  A new session replaces a lease whose session the PyWorker no longer holds.
- `POST /lease/end {"session_id"}`: the session's `on_close_route`; the lease ends (token revoked,
  its WebSockets closed, outputs wiped).
- `POST /lease/sync {"sessions": [...]}`: the PyWorker's live sessions, every few seconds; a lease whose
  session is gone ends even if the close callback was lost.
- `GET /health`: 200 once SwarmUI can generate (the PyWorker's readiness and health check).
- `POST /bench`: the PyWorker's start-up benchmark. It takes BENCH_SECONDS at workload BENCH_WORKLOAD,
  so a session opened with CloudBackends' cost (100) reads as one fully used worker and the next
  session goes to, or makes vast start, another worker.

The lease lasts as long as its vast session (the client's renewals decide), so no idle timer runs here.
The gateway must serve TLS (vast's instance certificate): CloudBackends refuses a plain-HTTP address.

Environment (read by WorkerConfig.from_env, documented in docs/swarm-worker.md): the swarm worker's,
SWARM_LEASE_CONTROL_PORT (18000), SWARM_MODEL_MANIFEST, SWARM_MODEL_DOWNLOAD_ROOT, and vast's
PUBLIC_IPADDR and VAST_TCP_PORT_<gateway port>.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from aiohttp import web

from common.jobs import JobError
from common.redaction import configure_logging, register_env_secrets
from handlers.swarm_worker.config import WorkerConfig
from handlers.swarm_worker.leases import Lease
from handlers.swarm_worker.manifest import load_manifest, prefetch_models
from handlers.swarm_worker.runtime import WorkerRuntime, run_until_stopped, stop_on_signals

log = logging.getLogger("swarm.vast")

BENCH_SECONDS = 1.0
BENCH_WORKLOAD = 100.0  # kept equal to handlers.swarm_worker.vast.BENCH_WORKLOAD (that module runs in .venv-vast)


def vast_public_url(cfg: WorkerConfig) -> str:
    """The gateway as vast.ai maps it: https://PUBLIC_IPADDR:VAST_TCP_PORT_<port>."""
    url = cfg.vast_url()
    if url is None:
        raise ValueError(f"PUBLIC_IPADDR and VAST_TCP_PORT_{cfg.public_port} must be set (vast.ai sets them when "
                         f"the template exposes port {cfg.public_port})")
    return url


class LeaseControl:
    """At most one vast session mapped to one worker lease."""

    def __init__(self, runtime: WorkerRuntime, public_url: str):
        self.rt = runtime
        self.public_url = public_url
        self.session_id: str | None = None
        self.lease: Lease | None = None
        self.first: dict | None = None
        self._lock = asyncio.Lock()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/lease", self.open)
        app.router.add_post("/lease/end", self.end)
        app.router.add_post("/lease/sync", self.sync)
        app.router.add_get("/health", self.health)
        app.router.add_post("/bench", self.bench)
        return app

    async def open(self, request: web.Request) -> web.Response:
        session_id = (await _json(request)).get("session_id")
        if not isinstance(session_id, str) or not session_id:
            return web.json_response({"success": False, "error_id": "session_required",
                                      "error": "session_id: a vast session is required to lease this worker"},
                                     status=422)
        async with self._lock:
            if self.session_id is not None and self.session_id != session_id:
                # The PyWorker holds one session at a time and has checked this one is live: the old one
                # is gone even if its close callback has not arrived.
                log.warning("a new vast session arrived before the previous lease was closed; closing it")
                await self._close()
            if self.session_id is None:
                lease, first = await self.rt.leases.begin(None, None, None)
                if lease is None:
                    return web.json_response(first, status=503)
                self.session_id, self.lease = session_id, lease
                self.first = {**first, "public_url": self.public_url}
                log.info("lease %d opened for a vast session", lease.number)
            return web.json_response(self.first)

    async def end(self, request: web.Request) -> web.Response:
        session_id = (await _json(request)).get("session_id")
        async with self._lock:
            if self.session_id is None or session_id != self.session_id:
                return web.json_response({"ended": False})
            await self._close()
        return web.json_response({"ended": True})

    async def sync(self, request: web.Request) -> web.Response:
        live = (await _json(request)).get("sessions")
        if not isinstance(live, list):
            return web.json_response({"error": "sessions: expected a list"}, status=422)
        async with self._lock:
            if self.session_id is not None and self.session_id not in live:
                log.info("the lease's vast session is gone (expired or ended): closing the lease")
                await self._close()
        return web.json_response({"lease_active": self.session_id is not None})

    async def health(self, request: web.Request) -> web.Response:
        if self.rt.process.ready:
            return web.json_response({"ready": True})
        return web.json_response({"ready": False, "state": self.rt.process.state}, status=503)

    async def bench(self, request: web.Request) -> web.Response:
        await asyncio.sleep(BENCH_SECONDS)
        return web.json_response({"success": True, "workload": BENCH_WORKLOAD})

    async def _close(self) -> None:
        lease, self.lease, self.session_id, self.first = self.lease, None, None, None
        if lease is not None:
            await self.rt.leases.end(lease, "session_ended")


async def _json(request: web.Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


async def _serve(control: LeaseControl, port: int) -> web.AppRunner:
    runner = web.AppRunner(control.app(), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def main() -> int:
    configure_logging()
    register_env_secrets(["SWARM_ACCESS_TOKEN", "SWARMUI_WORKER_TOKEN"])
    try:
        cfg = WorkerConfig.from_env()
        public_url = vast_public_url(cfg)
        entries = load_manifest(cfg.model_manifest) if cfg.model_manifest else []
    except (ValueError, JobError) as exc:
        log.error("configuration error: %s", exc)
        return 2
    if cfg.access_token:
        log.error("SWARM_ACCESS_TOKEN / SWARMUI_WORKER_TOKEN must not be set on vast.ai serverless: a fixed token "
                  "would outlive every lease; each lease gets its own")
        return 2
    if cfg.tls_cert is None:
        log.error("vast.ai serverless needs the gateway on TLS (CloudBackends refuses a plain-HTTP address): "
                  "no /etc/instance.crt, and SWARMUI_TLS_CERT/SWARMUI_TLS_KEY are not set")
        return 2
    if entries and not prefetch_models(entries, cfg.model_download_root):
        return 1

    rt = WorkerRuntime(cfg)
    control = LeaseControl(rt, public_url)
    stop = stop_on_signals()
    runner = None
    try:
        rt.start_background().result(60)
        runner = rt.submit(_serve(control, cfg.lease_control_port)).result(30)
        log.info("lease control on 127.0.0.1:%d; gateway at %s", cfg.lease_control_port, public_url)
        return run_until_stopped(rt, stop)
    finally:
        if runner is not None:
            rt.submit(runner.cleanup()).result(10)
        rt.close()


if __name__ == "__main__":
    sys.exit(main())
