"""vast.ai serverless, vast side: `.venv-vast/bin/python -m handlers.swarm_worker.vast`.

The `vastai` package's PyWorker `Worker` owns everything vast-facing: it registers with the
autoscaler, verifies the signed grants, holds vast *sessions* (`/session/create|get|end`, built in)
and reports load. It forwards verified requests to handlers.swarm_worker.lease_control on
127.0.0.1:SWARM_LEASE_CONTROL_PORT:

- `/lease` (what HartsyAI CloudBackends' VastAIProvider.cs `LeaseCallAsync` posts, with
  `{"session_id"}` as payload): refused (422) unless that session is one this worker holds, since
  the PyWorker checks the envelope's session but passes only the payload on;
- `/bench`: the start-up benchmark (one fixed-time request; see lease_control.BENCH_SECONDS).

One session per worker (`max_sessions=1`): a second `/session/create` gets 429 and CloudBackends
routes again, to another worker. Ready (reported to the autoscaler) once lease_control's `/health`
answers, i.e. SwarmUI can generate. Every SYNC_SECONDS the live sessions are sent to
lease_control, so a lease whose session expired ends even if the close callback was lost.

Runs in `.venv-vast` (vastai and its exact pins; no pydantic): only the standard library, aiohttp,
vastai and handlers.swarm_worker.config (standard library only) are imported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

import aiohttp

from handlers.swarm_worker.config import lease_control_port

BENCH_WORKLOAD = 100.0  # kept equal to lease_control.BENCH_WORKLOAD
SYNC_SECONDS = 5.0

log = logging.getLogger("swarm.vast")


def control_url() -> str:
    return f"http://127.0.0.1:{lease_control_port()}"


async def wait_ready(session: aiohttp.ClientSession, url: str, poll: float = 1.0) -> None:
    """Until lease_control says SwarmUI can generate (the autoscaler sees the worker loading meanwhile)."""
    while True:
        try:
            async with session.get(f"{url}/health") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(poll)


async def sync_sessions(session: aiohttp.ClientSession, url: str, live) -> None:
    while True:
        await asyncio.sleep(SYNC_SECONDS)
        try:
            async with session.post(f"{url}/lease/sync", json={"sessions": sorted(live())}) as r:
                await r.read()
        except aiohttp.ClientError as exc:
            log.warning("could not send the live sessions to lease control: %s", exc)


def worker_config(live_sessions):
    from vastai import BenchmarkConfig, HandlerConfig, WorkerConfig
    from vastai.serverless.server.lib.data_types import JsonDataException

    url = control_url()

    def held_session(payload: dict) -> dict:
        if payload.get("session_id") not in live_sessions():
            raise JsonDataException({"session_id": "not a session this worker holds"})
        return payload

    @contextlib.asynccontextmanager
    async def lifecycle():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            await wait_ready(session, url)
            syncer = asyncio.create_task(sync_sessions(session, url, live_sessions))
            try:
                yield
            finally:
                syncer.cancel()

    return WorkerConfig(
        model_server_url="http://127.0.0.1",
        model_server_port=int(url.rsplit(":", 1)[1]),
        model_healthcheck_url="/health",
        max_sessions=1,
        lifecycle=lifecycle(),
        handlers=[
            HandlerConfig(route="/lease", allow_parallel_requests=False, max_queue_time=60.0,
                          request_parser=held_session, workload_calculator=lambda payload: 1.0),
            HandlerConfig(route="/bench", allow_parallel_requests=False,
                          workload_calculator=lambda payload: BENCH_WORKLOAD,
                          benchmark_config=BenchmarkConfig(dataset=[{}], runs=int(os.environ.get("BENCHMARK_RUNS", "3")),
                                                           concurrency=1, do_warmup=False)),
        ],
    )


def main() -> None:
    from vastai import Worker

    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "info").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    holder: dict = {}
    worker = Worker(worker_config(lambda: set(holder["worker"].backend.sessions)))
    holder["worker"] = worker
    worker.run()


if __name__ == "__main__":
    main()
