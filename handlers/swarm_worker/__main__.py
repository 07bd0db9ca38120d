"""RunPod entry: `python -m handlers.swarm_worker` (SDK flags such as --test_input pass through).

SwarmUI and the gateway start as soon as the SDK's worker loop runs, before the first job, so
a worker woken by any job is ready as early as possible. Several jobs run at once, so
`health`, `ready` and `shutdown` are answered while a `keepalive` holds the worker; a lease
holds it alone (see `concurrency_modifier`).
"""

from __future__ import annotations

from collections.abc import Callable

from common import runpod_entry
from handlers.swarm_worker.handler import handler
from handlers.swarm_worker.runtime import WorkerRuntime, get_runtime


def main() -> None:
    runtime = get_runtime()
    runpod_entry.start(handler, env_secrets=["SWARM_ACCESS_TOKEN", "SWARMUI_WORKER_TOKEN"],
                       concurrency_modifier=concurrency_modifier(runtime))


def lease_jobs_taken() -> bool:
    """Whether the SDK has taken a `lease` job that is queued or running on this worker."""
    from runpod.serverless.modules.worker_state import JobsProgress

    return any(isinstance(getattr(job, "input", None), dict) and job.input.get("action") == "lease"
               for job in list(JobsProgress()))


def concurrency_modifier(runtime: WorkerRuntime, lease_taken: Callable[[], bool] = lease_jobs_taken
                         ) -> Callable[[int], int]:
    """Jobs the worker takes at once; its first call also boots SwarmUI and the gateway.

    A lease owns the whole worker: while one is taken or held the worker reports 1, so the next
    queued lease stays in RunPod's queue, where it makes RunPod start another worker, instead of
    landing here (the SDK's `set_scale`, runpod/serverless/modules/rp_scale.py:87-102, takes no job
    while the value differs from its queue size and jobs are in flight). Legacy holds keep the
    configured value: `ready` and `shutdown` must run beside a `wakeup` or `keepalive` hold.
    The SDK calls this from its job-taking loop, before each take (rp_scale.py:181-184).

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
        return 1 if runtime.leases.current is not None or lease_taken() else n

    return modifier


if __name__ == "__main__":
    main()
