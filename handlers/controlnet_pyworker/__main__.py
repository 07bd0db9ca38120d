"""RunPod entry: `python -m handlers.controlnet_pyworker` (SDK flags such as --test_input pass through).

Under RunPod's worker loop the PRELOAD_MODEL variant (default: the manifest's) is loaded
before the first job is taken, so the first request does not pay for it.
"""

from __future__ import annotations

import os

from common import runpod_entry
from common.redaction import configure_logging
from handlers.controlnet_pyworker.handler import get_engine, handler


def main() -> None:
    configure_logging()
    preload = os.environ.get("PRELOAD_MODEL", "")
    if os.environ.get("RUNPOD_WEBHOOK_GET_JOB") and preload.lower() != "none":
        engine = get_engine()
        engine.get(preload or engine.manifest.default_variant)
    runpod_entry.start(handler)


if __name__ == "__main__":
    main()
