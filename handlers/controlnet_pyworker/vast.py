"""The vast.ai serverless front: `.venv-vast/bin/python -m handlers.controlnet_pyworker.vast`.

The `vastai` package's PyWorker `Worker` listens on WORKER_PORT, checks the autoscaler's
signature, queues requests FIFO (one at a time: the GPU serializes anyway) and forwards
`POST /generate` to the model server on 127.0.0.1:MODEL_SERVER_PORT. It tails MODEL_LOG from
the start: the server's `MODEL_SERVER_READY` line starts the benchmark, a `MODEL_SERVER_FATAL
<cause>` line marks the worker errored for good, and `<marker> <cause>` is the `error_msg` the
autoscaler shows. vastai 1.9.1 matches the markers as substrings and reports the matched string
(`vastai/serverless/server/lib/backend.py:907-969`: `msg in log_line`, `backend_errored(msg)`);
vast documents prefix matches, and the server writes its markers at the start of the line.
The benchmark posts the PRELOAD_MODEL variant, so it runs on the pipeline already in memory.

Runs in `.venv-vast` (vastai 1.9.1 and its exact pins, no torch, no pydantic): this module
imports only the standard library, `vastai` and the pure-Python `workload`, `model_log` and
`settings`.

Settings (`settings.Settings`): MODEL_SERVER_PORT, MODEL_LOG, MAX_QUEUE_TIME, BENCHMARK_SIZE and
BENCHMARK_RUNS (smaller only for tests), PRELOAD_MODEL, LOG_LEVEL; vastai itself reads WORKER_PORT
and the autoscaler variables (REPORT_ADDR, CONTAINER_ID, PUBLIC_IPADDR, VAST_TCP_PORT_<port>,
MASTER_TOKEN, USE_SSL).
"""

from __future__ import annotations

import logging
import random

from handlers.controlnet_pyworker import workload
from handlers.controlnet_pyworker.model_log import FATAL_CAUSES, FATAL_MARKER, READY_MARKER
from handlers.controlnet_pyworker.settings import Settings


def benchmark_payload(settings: Settings | None = None) -> dict:
    """Typical traffic on the preloaded variant (PRELOAD_MODEL; unset: the server's default),
    1024x1024 (BENCHMARK_SIZE), mock depth, random seed. Another variant would load a second
    SDXL pipeline next to the preloaded one."""
    settings = settings or Settings.from_env()
    size = settings.benchmark_size
    preload = settings.preload
    model = {"model": preload} if preload and preload.lower() != "none" else {}
    return {
        **model,
        "prompt": "a wide mountain valley with a river, morning light, detailed landscape photograph",
        "negative_prompt": "blurry, low quality",
        "mock_depth": True,
        "width": size,
        "height": size,
        "seed": random.randrange(2**31),
    }


def worker_config(settings: Settings):
    from vastai import BenchmarkConfig, HandlerConfig, LogActionConfig, WorkerConfig

    return WorkerConfig(
        model_server_url="http://127.0.0.1",
        model_server_port=settings.port,
        model_log_file=str(settings.model_log),
        model_healthcheck_url="/ping",
        handlers=[
            HandlerConfig(
                route="/generate",
                allow_parallel_requests=False,
                max_queue_time=settings.max_queue_time,
                workload_calculator=workload.calculate,
                benchmark_config=BenchmarkConfig(generator=lambda: benchmark_payload(settings),
                                                 runs=settings.benchmark_runs, do_warmup=True),
            )
        ],
        # The causes first: the front reports the first marker a line contains.
        log_action_config=LogActionConfig(on_load=[READY_MARKER],
                                          on_error=[*(f"{FATAL_MARKER} {c}" for c in FATAL_CAUSES), FATAL_MARKER]),
    )


def apply_log_level(settings: Settings) -> None:
    """LOG_LEVEL for the root logger and its handlers: vastai's `Worker()` sets both to DEBUG
    (vastai/serverless/server/worker.py:404-419, vastai 1.9.1), which logs every request."""
    level = settings.log_level.upper()
    root = logging.getLogger()
    root.setLevel(level)
    for handler in root.handlers:
        handler.setLevel(level)


def main() -> None:
    from vastai import Worker

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    worker = Worker(worker_config(settings))
    apply_log_level(settings)
    worker.run()


if __name__ == "__main__":
    main()
