"""Shared test setup. Fixtures of each area live in their own plugin module, listed here."""

import os

# Tests talk to servers on 127.0.0.1 only; the SSRF guard is switched off for them (metadata
# addresses stay refused). Set before any project module is imported.
os.environ.setdefault("ALLOW_PRIVATE_DOWNLOADS", "1")
os.environ.setdefault("RUNPOD_SKIP_AUTO_SYSTEM_CHECKS", "true")
os.environ.setdefault("RUNPOD_SKIP_GPU_CHECK", "true")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

pytest_plugins: list[str] = [
    "tests.fixtures.s3",
    "tests.fixtures.hub",
    "tests.fixtures.uploads",
    "tests.controlnet_fixtures",
    "tests.trainer_fixtures",
    "tests.fixtures.docker",
]
