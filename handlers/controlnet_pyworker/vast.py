"""The vast.ai serverless front: `.venv-vast/bin/python -m handlers.controlnet_pyworker.vast`.

The `vastai` package's PyWorker `Worker` listens on WORKER_PORT, checks the autoscaler's
signature, queues requests FIFO (one at a time: the GPU serializes anyway) and forwards
`POST /generate` to the model server on 127.0.0.1:MODEL_SERVER_PORT. It tails MODEL_LOG from
the start: the server's `MODEL_SERVER_READY` line starts the benchmark, `MODEL_SERVER_FATAL`
marks the worker errored for good (the server writes it only when its preload failed).

Runs in `.venv-vast` (vastai 1.9.1 and its exact pins, no torch, no pydantic): this module
imports only the standard library, `vastai` and the pure-Python `workload`.

Environment: MODEL_SERVER_PORT (5001), MODEL_LOG, WORKER_PORT and the autoscaler variables
vastai reads (REPORT_ADDR, CONTAINER_ID, PUBLIC_IPADDR, VAST_TCP_PORT_<port>, MASTER_TOKEN,
USE_SSL); MAX_QUEUE_TIME (seconds of estimated wait before 429, 60); BENCHMARK_SIZE (1024)
and BENCHMARK_RUNS (3) shape the start-up benchmark (smaller only for tests).
"""

from __future__ import annotations

import logging
import os
import random

from handlers.controlnet_pyworker import workload

READY_MARKER = "MODEL_SERVER_READY"   # kept equal to server.READY_MARKER (server imports torch-side code)
FATAL_MARKER = "MODEL_SERVER_FATAL"
DEFAULT_MODEL_LOG = "/workspace/logs/model_server.log"


def benchmark_payload() -> dict:
    """Typical traffic: default variant (Lightning), 1024x1024 (BENCHMARK_SIZE), mock depth, random seed."""
    size = int(os.environ.get("BENCHMARK_SIZE", "1024"))
    return {
        "prompt": "a wide mountain valley with a river, morning light, detailed landscape photograph",
        "negative_prompt": "blurry, low quality",
        "mock_depth": True,
        "width": size,
        "height": size,
        "seed": random.randrange(2**31),
    }


def worker_config():
    from vastai import BenchmarkConfig, HandlerConfig, LogActionConfig, WorkerConfig

    return WorkerConfig(
        model_server_url="http://127.0.0.1",
        model_server_port=int(os.environ.get("MODEL_SERVER_PORT", "5001")),
        model_log_file=os.environ.get("MODEL_LOG", DEFAULT_MODEL_LOG),
        model_healthcheck_url="/ping",
        handlers=[
            HandlerConfig(
                route="/generate",
                allow_parallel_requests=False,
                max_queue_time=float(os.environ.get("MAX_QUEUE_TIME", "60")),
                workload_calculator=workload.calculate,
                benchmark_config=BenchmarkConfig(generator=benchmark_payload,
                                                 runs=int(os.environ.get("BENCHMARK_RUNS", "3")), do_warmup=True),
            )
        ],
        log_action_config=LogActionConfig(on_load=[READY_MARKER], on_error=[FATAL_MARKER]),
    )


def main() -> None:
    from vastai import Worker

    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "info").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    Worker(worker_config()).run()


if __name__ == "__main__":
    main()
