"""The controlnet-pyworker model server as a real subprocess on tiny models."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import re
import time

import pytest
import requests

from tests.controlnet_fixtures import body, png_size

NOT_AN_IMAGE = base64.b64encode(b"this is plain text, not a PNG or JPEG").decode()
# an 8x8 gray PNG
SMALL_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAAAAADhZOFXAAAAEElEQVR4nGNsYIAAJgaKGAAmCACQXTClHgAAAABJRU5ErkJggg=="


def post(srv, payload, **kw):
    return requests.post(f"{srv.url}/generate", json=payload, timeout=120, **kw)


def test_generate_returns_png_and_effective_parameters(cn_server):
    r = post(cn_server, body(era="wilderness", lora_strength=0.5, seed=99))
    assert r.status_code == 200, r.text
    out = r.json()
    assert png_size(out["images"][0]) == (256, 256) and out["format"] == "png"
    assert (out["seed"], out["seeds"], out["model"], out["era"]) == (99, [99], "lightning", "wilderness")
    assert (out["steps"], out["cfg"], out["scheduler"], out["lora_strength"]) == (6, 2.0, "euler_trailing", 0.5)
    assert out["workload"] > 0 and out["timings"]["total"] > 0 and "inference" in out["timings"]
    again = post(cn_server, body(era="wilderness", lora_strength=0.5, seed=99)).json()
    assert again["images"] == out["images"], "same seed and parameters, same image"
    assert "generate ok model=lightning" in cn_server.model_log.read_text()


def test_ping_models_checkhealth(cn_server):
    assert requests.get(f"{cn_server.url}/ping", timeout=10).json() == {"status": "ok", "ready": True}
    models = requests.get(f"{cn_server.url}/models", timeout=10).json()
    assert models["default"] == "lightning"
    assert models["variants"]["lightning"]["loaded"] is True and models["variants"]["lightning"]["on_disk"]
    assert models["variants"]["hyper"]["steps"] == 8 and models["variants"]["base"]["cfg"] == 7.5
    assert set(models["eras"]) >= {"wilderness", "pre_industrial", "future", "drone"}
    assert models["schedulers"] == ["auto", "euler", "dpm_sde"] and models["auto_depth"] is True
    health = requests.get(f"{cn_server.url}/checkhealth", timeout=10).json()
    assert health["ready"] is True and "lightning" in health["loaded"] and health["device"] == "cpu"
    assert health["ram"]["process_rss_mb"] > 0 and health["queue_depth"] >= 0 and health["uptime_s"] > 0
    assert health["max_queue"] == 2


def test_ready_line_after_preload(cn_server):
    lines = cn_server.model_log.read_text().splitlines()
    assert "model server starting" in lines[0]
    ready = [ln for ln in lines if "MODEL_SERVER_READY" in ln]
    assert len(ready) == 1 and "preload=lightning" in ready[0]
    assert ready[0].startswith("MODEL_SERVER_READY "), "vast.ai documents log actions as prefix matches"
    assert not any("MODEL_SERVER_FATAL" in ln for ln in lines)


@pytest.mark.parametrize("override,field", [
    ({"width": 300}, "width"),
    ({"height": 4096}, "height"),
    ({"width": 128}, "width"),
    ({"steps": 0}, "steps"),
    ({"steps": 101}, "steps"),
    ({"cfg": -0.5}, "cfg"),
    ({"cfg": 30.5}, "cfg"),
    ({"lora_strength": 2.5}, "lora_strength"),
    ({"controlnet_strength": -0.1}, "controlnet_strength"),
    ({"model": "turbo"}, "model"),
    ({"era": "medieval"}, "era"),
    ({"scheduler": "ddim"}, "scheduler"),
    ({"mock_depth": None, "depth_map_b64": "@@not base64@@"}, "depth_map_b64"),
    ({"mock_depth": None, "depth_map_b64": NOT_AN_IMAGE}, "depth_map_b64"),
    ({"mock_depth": None, "depth_map_b64": "A" * 300_004}, "depth_map_b64"),
    ({"mock_depth": None, "auto_depth": True, "image_b64": NOT_AN_IMAGE}, "image_b64"),
    ({"prompt": "x" * 2001}, "prompt"),
    ({"prompt": None}, "prompt"),
    ({"num_images": 5}, "num_images"),
    ({"seed": -1}, "seed"),
    ({"surprise": 1}, "surprise"),
    ({"output": {"method": "transfer_sh"}}, "output.method"),
    ({"depth_map_b64": SMALL_PNG}, "depth source"),
    ({"mock_depth": None, "image_b64": SMALL_PNG}, "depth source"),
    ({"mock_depth": None}, "depth source"),
    ({"output": {"method": "ftp"}}, "output.method"),
])
def test_bad_input_is_422_naming_the_field(cn_server, override, field):
    r = post(cn_server, body(**override))
    assert r.status_code == 422, r.text
    out = r.json()
    assert out["error_code"] == "invalid_input"
    assert any(d.startswith(field) or field in d for d in out["details"]), out
    assert "x" * 100 not in r.text, "rejected values are not echoed"


def test_invalid_json_is_422(cn_server):
    r = requests.post(f"{cn_server.url}/generate", data=b"{not json", timeout=10)
    assert r.status_code == 422 and r.json()["details"] == ["body: not valid JSON"]


def test_flood_gets_429_with_retry_after(cn_server):
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(lambda i: post(cn_server, body(seed=i)), range(10)))
    codes = [r.status_code for r in responses]
    assert codes.count(200) >= 3 and codes.count(429) >= 1, codes
    assert set(codes) <= {200, 429}
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1 and r.json()["error_code"] == "queue_full"
    time.sleep(0.2)
    assert requests.get(f"{cn_server.url}/checkhealth", timeout=10).json()["queue_depth"] == 0


def test_a_client_that_goes_away_stops_its_generation(cn_server):
    slow = body(seed=11, steps=100, width=512, height=512)  # tens of seconds on CPU
    with pytest.raises(requests.exceptions.ReadTimeout):  # the caller gives up and closes the connection
        requests.post(f"{cn_server.url}/generate", json=slow, timeout=2)
    deadline = time.monotonic() + 30
    while "code=cancelled" not in cn_server.model_log.read_text():
        assert time.monotonic() < deadline, f"the generation ran on\n{cn_server.log_tail()}"
        time.sleep(0.1)
    assert "generate failed status=499 code=cancelled" in cn_server.model_log.read_text()
    assert "generation stopped after step" in cn_server.log_tail()
    assert post(cn_server, body()).status_code == 200  # the queue moved on


def test_engine_failure_is_500_and_server_stays_up(cn_server):
    r = post(cn_server, body(model="broken"))
    assert r.status_code == 500, r.text
    out = r.json()
    assert out["error_code"] == "engine_failed" and len(out["error"]) < 300
    assert "Traceback" not in r.text
    assert requests.get(f"{cn_server.url}/ping", timeout=10).status_code == 200
    assert post(cn_server, body()).status_code == 200
    health = requests.get(f"{cn_server.url}/checkhealth", timeout=10).json()
    assert health["last_error"]["where"] == "generate" and "engine_failed" in health["last_error"]["message"]
    assert "MODEL_SERVER_FATAL" not in cn_server.model_log.read_text(), "a request failure is not fatal"


def test_output_spec_uploads_to_s3_instead_of_inline(cn_server, s3_server):
    import io
    import zipfile

    spec = {"method": "s3", "s3": s3_server.spec(key_prefix="renders", presign_expiry_seconds=3600)}
    r = post(cn_server, body(num_images=2, seed=31, output=spec), headers={"X-Request-Id": "cn-upload-1"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert "images" not in out and out["seeds"] == [31, 32]
    rec = out["upload"]
    assert rec["download_method"] == "s3" and rec["attempts"] == [{"method": "s3", "ok": True}]
    assert s3_server.spec()["secret_key"] not in r.text
    blob = requests.get(rec["download_url"], timeout=30)
    assert blob.status_code == 200 and len(blob.content) == rec["size_bytes"]
    names = zipfile.ZipFile(io.BytesIO(blob.content)).namelist()
    assert sorted(names) == ["cn-upload-1_0.png", "cn-upload-1_1.png"]
    assert "upload" in out["timings"]


def test_unreachable_upload_target_is_502(cn_server, tmp_path):
    spec = {"method": "s3", "s3": {"endpoint_url": "http://127.0.0.1:9", "bucket": "nowhere", "access_key": "AKEY12",
                                   "secret_key": "very-secret-value"}}
    r = post(cn_server, body(output=spec))
    assert r.status_code == 502, r.text
    assert r.json()["error_code"] == "upload_failed" and "very-secret-value" not in r.text


def test_unusable_manifest_writes_the_fatal_line_and_exits(cn_models, tmp_path):
    import subprocess
    import sys

    from tests.controlnet_fixtures import REPO, free_port, server_env

    bad = tmp_path / "manifest.json"
    bad.write_text('{"variants": {}}')
    model_log = tmp_path / "model_server.log"
    model_log.write_text("MODEL_SERVER_READY stale line from an earlier boot\n")
    env = server_env(cn_models, model_log, free_port(), MODEL_MANIFEST=str(bad))
    proc = subprocess.run([sys.executable, "-m", "handlers.controlnet_pyworker.server"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    text = model_log.read_text()
    assert "MODEL_SERVER_FATAL cannot start: manifest: missing 'components'" in text
    assert text.startswith("MODEL_SERVER_FATAL cannot start: "), "the marker opens the line"
    assert "MODEL_SERVER_READY" not in text, "the log is truncated at start"


def test_cuda_error_marks_the_instance_fatal(app_state, monkeypatch):
    """In-process app: a (simulated) CUDA error is a 500 for the request and MODEL_SERVER_FATAL
    for the PyWorker, which then reports the instance as errored."""
    from diffusers import StableDiffusionXLControlNetPipeline
    from fastapi.testclient import TestClient

    from handlers.controlnet_pyworker.server import create_app

    state = app_state

    def illegal_access(self, *a, **k):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(StableDiffusionXLControlNetPipeline, "__call__", illegal_access)
    with TestClient(create_app(state, preload=False)) as client:
        r = client.post("/generate", json=body())
        assert r.status_code == 500 and r.json()["error_code"] == "engine_failed"
        assert client.get("/checkhealth").json()["status"] == "unusable"
    assert "MODEL_SERVER_FATAL device unusable: RuntimeError: CUDA error" in state.model_log.path.read_text()


# --- closed by default: loopback, or a token ---------------------------------------------------

def test_model_server_listens_on_loopback_unless_told_otherwise(monkeypatch):
    from handlers.controlnet_pyworker.server import bind_settings
    from handlers.controlnet_pyworker.settings import Settings

    for name in ("MODEL_SERVER_HOST", "MODEL_SERVER_PORT", "MODEL_SERVER_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    assert bind_settings(Settings.from_env()) == ("127.0.0.1", 5001, None)
    monkeypatch.setenv("MODEL_SERVER_HOST", "0.0.0.0")
    with pytest.raises(ValueError, match="MODEL_SERVER_TOKEN"):
        bind_settings(Settings.from_env())
    monkeypatch.setenv("MODEL_SERVER_TOKEN", "tok-123456789")
    assert bind_settings(Settings.from_env()) == ("0.0.0.0", 5001, "tok-123456789")


def test_beyond_loopback_without_a_token_the_server_refuses_to_start(cn_models, tmp_path):
    import subprocess
    import sys

    from tests.controlnet_fixtures import REPO, free_port, server_env

    model_log = tmp_path / "model_server.log"
    env = server_env(cn_models, model_log, free_port(), MODEL_SERVER_HOST="0.0.0.0")
    env.pop("MODEL_SERVER_TOKEN", None)
    proc = subprocess.run([sys.executable, "-m", "handlers.controlnet_pyworker.server"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "MODEL_SERVER_HOST=0.0.0.0 listens beyond loopback: set MODEL_SERVER_TOKEN" in proc.stderr
    assert model_log.read_text().startswith("MODEL_SERVER_FATAL cannot start: MODEL_SERVER_HOST=0.0.0.0")


def test_the_image_does_not_expose_the_model_port():
    import re

    from tests.controlnet_fixtures import REPO

    for dockerfile in (REPO / "images/controlnet-pyworker/Dockerfile", REPO / ".runpod/Dockerfile"):
        exposed = [p for line in re.findall(r"^EXPOSE (.+)$", dockerfile.read_text(), re.MULTILINE)
                   for p in line.split()]
        assert exposed == ["3000"], f"{dockerfile}: vast.ai publishes every EXPOSEd port: {exposed}"


@pytest.fixture
def app_state(cn_engine, monkeypatch, tmp_path):
    """An in-process server state on the tiny models (no preload thread)."""
    from handlers.controlnet_pyworker.engine import Engine
    from handlers.controlnet_pyworker.server import State

    monkeypatch.setenv("MODELS_DIR", str(cn_engine.models_dir))
    monkeypatch.setenv("MODEL_LOG", str(tmp_path / "model_server.log"))
    monkeypatch.delenv("MODEL_MANIFEST", raising=False)
    state = State()
    state.engines._engine = Engine(cn_engine.manifest, cn_engine.models_dir, device="cpu", fetch_missing=False)
    return state


def test_with_a_token_every_route_but_ping_needs_it(app_state):
    from fastapi.testclient import TestClient

    from common.result_models import ErrorResult
    from handlers.controlnet_pyworker.server import create_app

    token = "model-server-token-0123"
    good = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(app_state, preload=False, token=token)) as client:
        assert client.get("/ping").status_code == 200
        for method, path in (("post", "/generate"), ("get", "/models"), ("get", "/checkhealth"),
                             ("get", "/docs"), ("get", "/openapi.json")):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
                r = getattr(client, method)(path, headers=headers, **({"json": body()} if method == "post" else {}))
                assert r.status_code == 401, (path, headers, r.status_code)
                assert r.headers["WWW-Authenticate"] == "Bearer" and token not in r.text
                ErrorResult.model_validate(r.json())
        assert client.get("/models", headers=good).status_code == 200
        r = client.post("/generate", json=body(steps=1), headers=good)
        assert r.status_code == 200 and png_size(r.json()["images"][0]) == (256, 256)


def test_openapi_documents_the_generate_body_and_responses(app_state):
    """/docs shows the /generate body and its answers, though the route reads the body itself."""
    from fastapi.testclient import TestClient

    from handlers.controlnet_pyworker.server import create_app

    with TestClient(create_app(app_state, preload=False)) as client:
        doc = client.get("/openapi.json").json()
    op = doc["paths"]["/generate"]["post"]
    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    components = doc["components"]["schemas"]
    request = components[ref.rsplit("/", 1)[1]]
    assert request["required"] == ["prompt"] and {"mock_depth", "output", "num_images"} <= set(request["properties"])
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/GenerateResponse")
    assert op["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResult")
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(doc)))
    assert refs <= set(components), refs - set(components)


def test_a_request_is_validated_once(app_state, monkeypatch):
    from fastapi.testclient import TestClient

    from handlers.controlnet_pyworker import schema
    from handlers.controlnet_pyworker.server import create_app

    calls = []
    real = schema.validate
    monkeypatch.setattr(schema, "validate", lambda *a, **k: calls.append(1) or real(*a, **k))
    with TestClient(create_app(app_state, preload=False)) as client:
        r = client.post("/generate", json=body(steps=1))
    assert r.status_code == 200 and len(calls) == 1


# --- request size and shape ----------------------------------------------------------------------

def _raw_request(srv, head: bytes, chunks=(), *, timeout: float = 10.0) -> tuple[bytes, int]:
    """Send `head`, then `chunks` until the server answers; (response bytes, body bytes sent)."""
    import select
    import socket

    sent = 0
    with socket.create_connection(("127.0.0.1", srv.port), timeout=timeout) as sock:
        sock.sendall(head)
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(chunk)
            except OSError:  # the server answered and closed
                break
            sent += len(chunk)
        response = b""
        try:
            while b"\r\n\r\n" not in response:
                data = sock.recv(65536)
                if not data:
                    break
                response += data
        except OSError:
            pass
    return response, sent


def test_declared_oversize_body_is_413_before_any_byte_is_read(cn_server):
    head = (b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 50000000\r\n\r\n")
    response, _ = _raw_request(cn_server, head)  # no body follows: the answer cannot wait for it
    assert response.startswith(b"HTTP/1.1 413"), response[:200]


def test_streamed_oversize_body_is_cut_at_the_limit(cn_server):
    from handlers.controlnet_pyworker.settings import Settings

    limit = 300_000 + 1024 * 1024  # MAX_IMAGE_B64_BYTES of the fixture + 1 MiB
    assert Settings(max_image_b64_bytes=300_000).body_limit == limit  # the server's; the default is larger
    piece = b"A" * 65536
    chunk = b"%x\r\n%s\r\n" % (len(piece), piece)
    head = (b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    response, sent = _raw_request(cn_server, head, [chunk] * 400)  # 26 MB if nobody stops it
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert sent < 8 * limit, f"the server read {sent} bytes before answering"


def test_deeply_nested_json_is_422(cn_server):
    r = requests.post(f"{cn_server.url}/generate", data=b"[" * 100_000 + b"]" * 100_000,
                      headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 422, r.text[:500]
    assert r.json()["details"] == ["body: JSON nested too deeply"]
    nested: object = 1
    for _ in range(200):
        nested = [nested]
    r = post(cn_server, body(surprise=nested))
    assert r.status_code == 422 and r.json()["details"] == ["input: nested deeper than 32 levels"]


@pytest.mark.parametrize("override", [
    {"model": "m" * 200_000},
    {"era": "e" * 200_000},
    {"k" * 200_000: 1},
    {f"extra_{i}_" + "k" * 500: 1 for i in range(300)},
])
def test_user_sized_text_is_never_echoed_unbounded(cn_server, override):
    from handlers.controlnet_pyworker.schema import MAX_DETAIL_CHARS, MAX_DETAILS

    r = post(cn_server, body(**override))
    assert r.status_code == 422, r.text[:500]
    bound = 2 * (MAX_DETAILS + 1) * (MAX_DETAIL_CHARS + 10) + 500  # `error` and `details` carry the same lines
    assert len(r.content) < bound, f"{len(r.content)} bytes of error"
    assert all(len(d) <= MAX_DETAIL_CHARS + 3 for d in r.json()["details"])


def test_model_and_era_have_length_limits(cn_server):
    r = post(cn_server, body(model="l" * 65, era="w" * 65))
    assert r.status_code == 422
    details = r.json()["details"]
    assert "model: String should have at most 64 characters" in details
    assert "era: String should have at most 64 characters" in details


def test_redaction_never_runs_on_the_event_loop(app_state, monkeypatch):
    """Error texts and results are redacted on worker threads: a request's text can be megabytes."""
    import asyncio

    from fastapi.testclient import TestClient

    from common import jobs, redaction
    from handlers.controlnet_pyworker.server import create_app

    on_loop: list[int] = []
    calls: list[int] = []

    def watched(original):
        def redact_text(text, *args, **kwargs):
            calls.append(len(text))
            try:
                asyncio.get_running_loop()
                on_loop.append(len(text))
            except RuntimeError:
                pass
            return original(text, *args, **kwargs)
        return redact_text

    monkeypatch.setattr(jobs, "redact_text", watched(jobs.redact_text))
    monkeypatch.setattr(redaction, "redact_text", watched(redaction.redact_text))
    with TestClient(create_app(app_state, preload=False)) as client:
        assert client.post("/generate", json=body(width=100, prompt="p" * 5000)).status_code == 422
        assert client.post("/generate", content=b"{not json").status_code == 422
        assert client.post("/generate", json=body(steps=1)).status_code == 200
    assert calls, "the error and the result went through redaction"
    assert on_loop == []
