"""RunPod entry: `python -m handlers.swarm_worker` (SDK flags such as --test_input pass through).

SwarmUI and the gateway start at boot, before the first job, so a worker woken by any job
is ready as early as possible. Several jobs run at once, so `health`, `ready` and
`shutdown` are answered while a lease or a `keepalive` holds the worker.
"""

from __future__ import annotations

from common.redaction import configure_logging, register_env_secrets
from handlers.swarm_worker.handler import handler
from handlers.swarm_worker.runtime import get_runtime


def main() -> None:
    configure_logging()  # before importing runpod, whose import adds a root handler when there is none
    import runpod

    register_env_secrets(["SWARM_ACCESS_TOKEN"])
    runtime = get_runtime()
    runtime.start_background()
    concurrency = runtime.cfg.concurrency
    runpod.serverless.start({"handler": handler, "concurrency_modifier": lambda _current: concurrency})


if __name__ == "__main__":
    main()
