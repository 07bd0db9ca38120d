"""`generate` results uploaded to a real S3 server (SeaweedFS) instead of coming back inline."""

from __future__ import annotations

import base64
import hashlib

import pytest
import requests

from tests.fakes import swarmui as fake
from tests.swarm_helpers import call, configured_worker

WAN_HIGH = "Wan/wan2.2_i2v_high_noise_14B_fp8"
WAN_LOW = "Wan/wan2.2_i2v_low_noise_14B_fp8"


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("uploads")
    with configured_worker(tmp, FAKE_SWARMUI_VIDEO_BYTES=str(3 * 1024 * 1024)) as env:
        yield env, tmp


def _fetch(url: str) -> bytes:
    r = requests.get(url, timeout=30)
    r.raise_for_status()
    return r.content


def test_text_to_image_uploaded_with_an_output_spec(worker, s3_server):
    _, tmp = worker
    out = call({"action": "generate", "params": {"prompt": "uploaded", "steps": 2, "images": 2},
                "output": {"method": "s3", "s3": s3_server.spec(key_prefix="swarm/")}}, "up-t2i")
    assert out["success"] is True and out["delivery"] == "upload", out
    for item in out["outputs"]:
        assert "base64" not in item
        record = item["upload"]
        assert record["download_method"] == "s3" and record["attempts"] == [{"method": "s3", "ok": True}]
        data = _fetch(record["download_url"])
        assert data.startswith(b"\x89PNG") and hashlib.sha256(data).hexdigest() == item["sha256"] == record["sha256"]
    assert s3_server.secret_key not in str(out)
    assert len(list((tmp / "job-outputs" / "up-t2i").glob("*.png"))) == 2  # the job's own copies stay


def test_image_to_video_too_large_to_inline_goes_to_the_configured_bucket(worker, s3_server, monkeypatch):
    for name, value in {"S3_ENDPOINT_URL": s3_server.endpoint_url, "S3_BUCKET": s3_server.bucket,
                        "AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
                        "AWS_DEFAULT_REGION": s3_server.region}.items():
        monkeypatch.setenv(name, value)
    init = "data:image/png;base64," + base64.b64encode(fake.tiny_png(3)).decode()
    out = call({"action": "generate", "inline_max_bytes": 1024 * 1024, "params": {
        "prompt": "a slow pan", "initimage": init, "videomodel": WAN_HIGH, "videoswapmodel": WAN_LOW,
        "videoframes": 81, "videosteps": 4, "videocfg": 1}}, "up-i2v")
    assert out["success"] is True and out["delivery"] == "upload", out
    video = out["outputs"][0]
    assert video["kind"] == "video" and video["size_bytes"] == 3 * 1024 * 1024
    data = _fetch(video["upload"]["download_url"])
    assert data[4:8] == b"ftyp" and hashlib.sha256(data).hexdigest() == video["sha256"]


def test_failed_upload_keeps_the_outputs(worker, s3_server):
    _, tmp = worker
    out = call({"action": "generate", "params": {"prompt": "kept", "steps": 1},
                "output": {"method": "s3", "s3": s3_server.spec(secret_key="wrong-secret-key-1234")}}, "up-fail")
    assert out["error_code"] == "upload_failed"
    assert out["details"][-1] == f"the outputs are kept on this worker at {tmp / 'job-outputs' / 'up-fail'}"
    assert "wrong-secret-key-1234" not in str(out)
    assert list((tmp / "job-outputs" / "up-fail").glob("*.png"))
