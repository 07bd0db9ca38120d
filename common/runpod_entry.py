"""Start a RunPod worker the same way in every image.

The runpod SDK logs each job's output at DEBUG, its default level, and outputs carry download
links and gateway tokens: the level defaults to INFO here, and all logging goes through the
one redacting handler (the SDK's import adds a plain root handler, which is replaced).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from common.redaction import configure_logging, register_env_secrets

# Endpoint secrets an operator sets once; masked wherever they would be printed.
COMMON_ENV_SECRETS = ("HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "GEMINI_API_KEY",
                      "RUNPOD_AI_API_KEY", "RUNPOD_API_KEY")


def start(handler: Callable[[dict], Any], *, env_secrets: Iterable[str] = (), **config: Any) -> None:
    os.environ.setdefault("RUNPOD_LOG_LEVEL", "INFO")
    register_env_secrets([*COMMON_ENV_SECRETS, *env_secrets])
    import runpod

    configure_logging()
    runpod.serverless.start({"handler": handler, **config})
