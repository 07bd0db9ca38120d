"""The RunPod Hub listing (.runpod/) and the generated single-file Dockerfile stay consistent
with the code they describe. No docker needed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from scripts.build_images import HUB_DOCKERFILE, HUB_IMAGE, hub_dockerfile

REPO = Path(__file__).resolve().parents[1]
RUNPOD = REPO / ".runpod"


def code_text() -> str:
    files = [*REPO.glob("common/**/*.py"), *REPO.glob(f"handlers/{HUB_IMAGE.replace('-', '_')}/**/*.py"),
             REPO / "images" / HUB_IMAGE / "start.sh"]
    return "\n".join(p.read_text() for p in files)


def test_hub_dockerfile_is_generated_from_the_image_dockerfiles():
    assert HUB_DOCKERFILE.read_text() == hub_dockerfile(), \
        "stale .runpod/Dockerfile: run `python -m scripts.build_images --write-hub-dockerfile`"
    stages = re.findall(r"^FROM \S+ AS (\S+)$", HUB_DOCKERFILE.read_text(), re.MULTILINE)
    assert stages[0] == "base" and stages[-1] == "gpu", "the Hub builds the last stage: the GPU target"
    assert "${WORKER_BASE}" not in HUB_DOCKERFILE.read_text()


def test_hub_env_settings_are_ones_the_worker_reads():
    hub = json.loads((RUNPOD / "hub.json").read_text())
    assert hub["type"] == "serverless" and hub["config"]["runsOn"] == "GPU"
    code = code_text()
    keys = [e["key"] for e in hub["config"]["env"]]
    assert len(keys) == len(set(keys))
    unread = [k for k in keys if not re.search(rf"[\"'{{$]{k}\b", code)]
    assert not unread, f"hub.json offers settings no code reads: {unread}"
    for entry in hub["config"]["env"]:
        spec = entry["input"]
        assert spec["name"] and spec["type"] in {"string", "number", "boolean"}
        if "options" in spec:
            assert spec["default"] in [o["value"] for o in spec["options"]]
    assert {"HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "LOG_LEVEL", "MODELS_DIR"} <= set(keys)


@pytest.mark.parametrize("index", range(len(json.loads((RUNPOD / "tests.json").read_text())["tests"])))
def test_hub_smoke_jobs_are_valid_requests(index):
    from handlers.controlnet_pyworker.manifest import load
    from handlers.controlnet_pyworker.schema import validate

    smoke = json.loads((RUNPOD / "tests.json").read_text())["tests"][index]
    assert smoke["timeout"] >= 600_000, "the first job on an empty volume fetches the variant's files"
    req = validate(smoke["input"], load(REPO / "handlers" / "controlnet_pyworker" / "manifest.json"))
    assert req.prompt


def test_hub_handler_starts_the_image_entry():
    text = (RUNPOD / "handler.py").read_text()
    assert "from handlers.controlnet_pyworker.__main__ import main" in text
