"""The RunPod Hub listing of controlnet-pyworker (.runpod/hub.json, tests.json) against what the
image and the code do. No docker needed."""

from __future__ import annotations

import json
import re

from tests.controlnet_fixtures import REPO

RUNPOD = REPO / ".runpod"


def hub() -> dict:
    return json.loads((RUNPOD / "hub.json").read_text())


def smoke() -> dict:
    return json.loads((RUNPOD / "tests.json").read_text())


def env_input(key: str) -> dict:
    return next(e["input"] for e in hub()["config"]["env"] if e["key"] == key)


def test_allowed_cuda_versions_cover_the_drivers_the_torch_wheel_runs_on():
    """RunPod matches allowedCudaVersions exactly; a cuXYZ wheel runs on that CUDA and every newer driver."""
    dockerfile = (REPO / "images/base/Dockerfile").read_text()
    cu = re.search(r"TORCH_INDEX_URL=https://download.pytorch.org/whl/cu(\d+)(\d)\b", dockerfile)
    assert cu, "the GPU base installs torch from a cuXYZ wheel index"
    built = (int(cu.group(1)), int(cu.group(2)))
    for allowed in (hub()["config"]["allowedCudaVersions"], smoke()["config"]["allowedCudaVersions"]):
        versions = {tuple(int(x) for x in v.split(".")) for v in allowed}
        assert all(v >= built for v in versions), f"{sorted(versions)}: below the wheel's CUDA {built}"
        assert {built, (12, 9), (13, 0)} <= versions, f"{sorted(versions)}: hosts on newer drivers left out"


def test_smoke_jobs_need_nothing_outside_the_image_and_the_hub():
    """The Hub runs tests.json on publish: every file a smoke job needs comes from Hugging Face."""
    from handlers.controlnet_pyworker.manifest import load

    manifest = load(REPO / "handlers/controlnet_pyworker/manifest.json")
    for test in smoke()["tests"]:
        job = test["input"]
        components = list(manifest.components_for(job.get("model") or manifest.default_variant, eras=False))
        if job.get("era"):
            components.append(manifest.components[manifest.eras[job["era"]].lora])
        if job.get("auto_depth"):
            components.append(manifest.components[manifest.depth_estimator])
        sources = [f.source for c in components for f in c.files]
        assert sources and all(s.startswith("hf://") for s in sources), \
            [s for s in sources if not s.startswith("hf://")]


def test_presets_for_the_three_variants():
    keys = {e["key"] for e in hub()["config"]["env"]}
    presets = hub()["config"]["presets"]
    assert sorted(p["defaults"]["PRELOAD_MODEL"] for p in presets) == ["base", "hyper", "lightning"]
    for preset in presets:
        assert preset["name"] and set(preset["defaults"]) <= keys


def test_env_descriptions_say_what_the_code_does():
    s3 = env_input("S3_BUCKET")["description"]
    assert "`output`" in s3 and "fails" in s3
    assert "too large to return inline" not in s3, "too-large results are refused, not uploaded"
    assert env_input("LOG_LEVEL").get("description")
    assert "still starts" in env_input("PRELOAD_MODEL")["description"]


def test_the_listing_shows_the_projects_own_icon():
    """The Hub shows `iconUrl`: it is this repository's icon at a release tag, and that file is an SVG."""
    import xml.etree.ElementTree as ET

    url = json.loads((REPO / ".runpod" / "hub.json").read_text())["iconUrl"]
    assert re.fullmatch(r"https://raw\.githubusercontent\.com/[\w.-]+/[\w.-]+/v[\d.]+/\.runpod/icon\.svg", url), url
    root = ET.parse(REPO / ".runpod" / "icon.svg").getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg" and root.get("viewBox") == "0 0 64 64"
