"""RunPod entry: `python -m handlers.swarm_worker` (SDK flags such as --test_input pass through).

SwarmUI and the gateway start at boot, before the first job, so a worker woken by any job
is ready as early as possible. Several jobs run at once, so `health`, `ready` and
`shutdown` are answered while a lease or a `keepalive` holds the worker.
"""

from __future__ import annotations

from collections.abc import Callable

from common.redaction import configure_logging, register_env_secrets
from handlers.swarm_worker.handler import handler
from handlers.swarm_worker.runtime import WorkerRuntime, get_runtime


def main() -> None:
    configure_logging()  # before importing runpod, whose import adds a root handler when there is none
    import runpod

    register_env_secrets(["SWARM_ACCESS_TOKEN"])
    runtime = get_runtime()
    runtime.start_background()
    runpod.serverless.start({"handler": handler, "concurrency_modifier": concurrency_modifier(runtime)})


def concurrency_modifier(runtime: WorkerRuntime) -> Callable[[int], int]:
    """Jobs the worker takes at once. With SWARM_LEASE_EXCLUSIVE a leased worker takes no other job
    (the SDK resizes its queue only once the lease has ended), so queued leases stay in RunPod's queue
    and scale the endpoint out instead of being answered `lease_busy` here."""
    n = runtime.cfg.concurrency
    if runtime.cfg.lease_exclusive:
        return lambda _current: 1 if runtime.lease is not None else n
    return lambda _current: n


if __name__ == "__main__":
    main()
