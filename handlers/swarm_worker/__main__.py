"""RunPod entry: `python -m handlers.swarm_worker` (SDK flags such as --test_input pass through).

SwarmUI and the gateway start as soon as the SDK's worker loop runs, before the first job, so
a worker woken by any job is ready as early as possible. Several jobs run at once, so
`health`, `ready` and `shutdown` are answered while a lease or a `keepalive` holds the worker.
"""

from __future__ import annotations

from collections.abc import Callable

from common import runpod_entry
from handlers.swarm_worker.handler import handler
from handlers.swarm_worker.runtime import WorkerRuntime, get_runtime


def main() -> None:
    runtime = get_runtime()
    runpod_entry.start(handler, env_secrets=["SWARM_ACCESS_TOKEN"],
                       concurrency_modifier=concurrency_modifier(runtime))


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
