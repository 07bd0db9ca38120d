"""RunPod entry: `python -m handlers.swarm_worker` (SDK flags such as --test_input pass through).

SwarmUI and the gateway start as soon as the SDK's worker loop runs, before the first job, so
a worker woken by any job is ready as early as possible. Several jobs run at once, so
`health`, `ready` and `shutdown` are answered while a lease or a `keepalive` holds the worker.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from common.redaction import configure_logging, register_env_secrets
from handlers.swarm_worker.handler import handler
from handlers.swarm_worker.runtime import WorkerRuntime, get_runtime


def main() -> None:
    configure_logging()  # before importing runpod, whose import adds a root handler when there is none
    # The SDK logs every job's output at DEBUG, its default; outputs carry gateway tokens.
    os.environ.setdefault("RUNPOD_LOG_LEVEL", "INFO")
    import runpod

    register_env_secrets(["SWARM_ACCESS_TOKEN"])
    runtime = get_runtime()
    runpod.serverless.start({"handler": handler, "concurrency_modifier": concurrency_modifier(runtime)})


def concurrency_modifier(runtime: WorkerRuntime) -> Callable[[int], int]:
    """Jobs the worker takes at once; its first call also boots SwarmUI and the gateway.

    Booting from here rather than before `runpod.serverless.start` matters: the SDK forks its
    heartbeat process (multiprocessing, fork) before its loop starts, and a fork while the
    runtime thread is spawning SwarmUI leaves the spawn's pipe open in the forked child, which
    hangs the spawn for good. The loop's first call comes after that fork.
    """
    n = runtime.cfg.concurrency
    booted = False

    def modifier(_current: int) -> int:
        nonlocal booted
        if not booted:
            booted = True
            runtime.start_background()
        return n

    return modifier


if __name__ == "__main__":
    main()
