"""The vast.ai front: the real `vastai` PyWorker (in .venv-vast, as a subprocess) in front of the
real model server, registered with a local autoscaler stand-in (tests/fakes/vast_autoscaler.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import requests

from tests.controlnet_fixtures import REPO, body, free_port, png_size, stop
from tests.fakes.vast_autoscaler import VastAutoscaler
from tests.process_helpers import stop_gracefully

VAST_PYTHON = REPO / ".venv-vast" / "bin" / "python"
START = REPO / "images" / "controlnet-pyworker" / "start.sh"
pytestmark = pytest.mark.skipif(not VAST_PYTHON.exists(), reason=".venv-vast not set up (make setup)")


def start_front(scaler: VastAutoscaler, tmp, *, model_log, model_port: int):
    port, http_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONHOME"))}
    env.update(scaler.worker_env(port, http_port))
    env.update(MODEL_SERVER_PORT=str(model_port), MODEL_LOG=str(model_log), BENCHMARK_SIZE="256",
               BENCHMARK_RUNS="1", PYTHONPATH=str(REPO), LOG_LEVEL="info")
    log = open(tmp / "front.log", "wb")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen([str(VAST_PYTHON), "-m", "handlers.controlnet_pyworker.vast"], cwd=tmp, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return proc, f"http://127.0.0.1:{port}"


def start_script_env(scaler: VastAutoscaler, models, tmp, model_port: int, **extra: str | None) -> dict[str, str]:
    """What an instance of the endpoint gets, for images/controlnet-pyworker/start.sh in vast mode; an
    `extra` of None removes that variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
    env.update(scaler.worker_env(free_port(), free_port()))
    env.update(CONTROLNET_MODE="vast", APP_DIR=str(REPO), PYTHON=sys.executable, VAST_PYTHON=str(VAST_PYTHON),
               MODELS_DIR=str(models), MODEL_LOG=str(tmp / "logs" / "model_server.log"),
               MODEL_SERVER_PORT=str(model_port), DEVICE="cpu", PYWORKER_DIR=str(tmp / "pyworker"),
               CONTROLNET_LOCK_FILE=str(tmp / "lock"))
    for name, value in extra.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def start_script(env: dict[str, str], tmp) -> subprocess.Popen:
    with open(tmp / "start.log", "wb") as log:
        return subprocess.Popen(["bash", str(START)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


@pytest.fixture(scope="module")
def vast_front(cn_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cn-vast")
    scaler = VastAutoscaler().start()
    proc, url = start_front(scaler, tmp, model_log=cn_server.model_log, model_port=cn_server.port)
    try:
        scaler.wait_for(lambda s: s.loaded_worker(), timeout=120, alive=lambda: proc.poll() is None)
    except BaseException:
        stop(proc)
        print((tmp / "front.log").read_text()[-4000:])
        raise
    yield scaler, url, tmp
    stop(proc)
    scaler.close()


def route(scaler: VastAutoscaler, cost: float) -> dict:
    r = requests.post(f"{scaler.base_url}/route/", json={"endpoint": scaler.endpoint, "api_key": scaler.api_key,
                                                         "cost": cost}, timeout=10)
    r.raise_for_status()
    return r.json()


def test_worker_reports_loaded_after_benchmark(vast_front):
    scaler, url, tmp = vast_front
    status = scaler.loaded_worker()
    assert status["url"] == url and status["id"] == 1 and status["mtoken"] == scaler.master_token
    assert status["max_perf"] > 0 and status["loadtime"] > 0 and not status["error_msg"]
    assert float((tmp / ".has_benchmark").read_text()) == pytest.approx(status["max_perf"])
    assert scaler.pubkey_fetches >= 1


def test_signed_request_through_the_front_returns_an_image(vast_front):
    from handlers.controlnet_pyworker import workload

    scaler, url, _ = vast_front
    payload = body(seed=21, era="future")
    auth = route(scaler, workload.units(payload))
    r = requests.post(f"{url}/generate", json={"auth_data": auth, "payload": payload}, timeout=120)
    assert r.status_code == 200, r.text
    out = r.json()
    assert png_size(out["images"][0]) == (256, 256) and out["seed"] == 21 and out["era"] == "future"
    assert out["workload"] == workload.units(payload) == auth["cost"]
    done = scaler.wait_for(lambda s: [q for d in s.deleted for q in d["requests"]
                                      if q["request_idx"] == auth["request_idx"]], timeout=30)
    assert done[0]["success"] is True


def test_model_server_errors_pass_through(vast_front):
    scaler, url, _ = vast_front
    auth = route(scaler, 1.0)
    r = requests.post(f"{url}/generate", json={"auth_data": auth, "payload": body(width=100)}, timeout=60)
    assert r.status_code == 422 and r.json()["details"][0].startswith("width:")


def test_bad_signature_and_missing_fields_are_refused(vast_front):
    scaler, url, _ = vast_front
    auth = route(scaler, 1.0)
    forged = dict(auth, signature=scaler.sign("http://attacker.example:1"))
    r = requests.post(f"{url}/generate", json={"auth_data": forged, "payload": body()}, timeout=30)
    assert r.status_code == 401
    partial = {k: v for k, v in auth.items() if k != "signature"}
    r = requests.post(f"{url}/generate", json={"auth_data": partial, "payload": body()}, timeout=30)
    assert r.status_code == 422 and "signature" in r.text
    assert requests.get(f"{url}/models", timeout=10).status_code in (404, 405), "GETs are not proxied"


def test_front_honours_log_level(vast_front):
    """vastai's Worker() sets the root logger and its handlers to DEBUG; LOG_LEVEL=info wins."""
    _, _, tmp = vast_front
    text = (tmp / "front.log").read_text()
    assert " INFO " in text or "[INFO" in text or text == "", text[-2000:]
    assert " DEBUG " not in text and "[DEBUG" not in text, text[-2000:]


def test_benchmark_runs_the_preloaded_variant(monkeypatch):
    """Benchmarking another variant than the preloaded one would load a second SDXL pipeline."""
    from handlers.controlnet_pyworker import vast

    monkeypatch.setenv("PRELOAD_MODEL", "hyper")
    assert vast.benchmark_payload()["model"] == "hyper"
    monkeypatch.setenv("PRELOAD_MODEL", "none")
    assert "model" not in vast.benchmark_payload()  # nothing preloaded: the server's default variant
    monkeypatch.delenv("PRELOAD_MODEL")
    assert "model" not in vast.benchmark_payload()


def test_fatal_line_marks_the_worker_errored_with_its_cause(tmp_path):
    """The server's `MODEL_SERVER_FATAL <cause>: ...` line is reported to the autoscaler as an error
    naming the cause (vastai 1.9.1 reports the marker that matched, not the line)."""
    model_log = tmp_path / "model_server.log"
    model_log.write_text("model server starting\nMODEL_SERVER_FATAL preload failed: variant 'lightning': "
                         "engine_failed: CUDA is unusable and REQUIRE_CUDA=1 at=2026-01-01T00:00:00\n")
    with VastAutoscaler() as scaler:
        proc, _ = start_front(scaler, tmp_path, model_log=model_log, model_port=free_port())
        try:
            status = scaler.wait_for(lambda s: next((x for x in s.statuses if x.get("error_msg")), None),
                                     timeout=60, alive=lambda: proc.poll() is None)
        finally:
            stop(proc)
    assert status["error_msg"] == "MODEL_SERVER_FATAL preload failed" and scaler.loaded_worker() is None


def test_start_script_runs_server_and_front(cn_models, tmp_path):
    """images/controlnet-pyworker/start.sh in vast mode: fetch check, model server, front; a second
    start on the same instance backs off; SIGTERM stops both."""
    from handlers.controlnet_pyworker import workload

    model_port = free_port()
    with VastAutoscaler() as scaler:
        env = start_script_env(scaler, cn_models, tmp_path, model_port, MODEL_SERVER_HOST="127.0.0.1",
                               BENCHMARK_SIZE="256", BENCHMARK_RUNS="1")
        proc = start_script(env, tmp_path)
        try:
            scaler.wait_for(lambda s: s.loaded_worker(), timeout=120, alive=lambda: proc.poll() is None)
            second = subprocess.run(["bash", str(START)], env=env, capture_output=True, text=True, timeout=30)
            assert second.returncode == 0 and "already running" in second.stderr
            payload = body(seed=3)
            auth = route(scaler, workload.units(payload))
            r = requests.post(f"{scaler.loaded_worker()['url']}/generate",
                              json={"auth_data": auth, "payload": payload}, timeout=120)
            assert r.status_code == 200 and png_size(r.json()["images"][0]) == (256, 256)
            assert (tmp_path / "pyworker" / ".has_benchmark").is_file()
        finally:
            stop_gracefully(proc)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{model_port}/ping", timeout=2)


# --- TLS: what vast's start script does with USE_SSL=true -------------------------------------------

def sign_certificate(signer, tls_dir, **env_extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
    env.update(CONTAINER_ID="4242", VAST_SIGN_CERT_URL=signer.url, VAST_TLS_DIR=str(tls_dir), PYTHONPATH=str(REPO))
    env.update(env_extra)
    return subprocess.run([str(VAST_PYTHON), "-m", "common.vast_tls"], env=env,
                          capture_output=True, text=True, timeout=120)


def test_instance_certificate_is_made_and_signed_like_vasts_start_script(tmp_path):
    import ssl

    from cryptography import x509

    from tests.fakes.vast_sign_cert import VastCertSigner

    with VastCertSigner() as signer:
        proc = sign_certificate(signer, tmp_path / "tls")
    assert proc.returncode == 0, proc.stderr
    sent = signer.requests[0]
    assert sent["query"] == {"instance_id": ["4242"]} and sent["content_type"] == "application/octet-stream"
    assert x509.load_pem_x509_csr(sent["body"]).subject.rfc4514_string() == "CN=pyworker.vast.ai,ST=CA,C=US"
    crt, key = tmp_path / "tls" / "instance.crt", tmp_path / "tls" / "instance.key"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    # what the front does with them (vastai lib/server.py:20-24)
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile=str(crt), keyfile=str(key))
    cert = x509.load_pem_x509_certificate(crt.read_bytes())
    assert cert.issuer == signer.ca_cert.subject


@pytest.mark.parametrize("case", ["refused", "no_container_id", "not_a_certificate"])
def test_failed_signing_says_why_and_writes_nothing(tmp_path, case):
    from tests.fakes.vast_sign_cert import VastCertSigner

    with VastCertSigner(fail_with=403 if case == "refused" else None) as signer:
        extra = {"CONTAINER_ID": ""} if case == "no_container_id" else {}
        if case == "not_a_certificate":
            extra["VAST_SIGN_CERT_URL"] = f"{signer.origin}/elsewhere/"  # answers 404 JSON
        proc = sign_certificate(signer, tmp_path / "tls", **extra)
    assert proc.returncode == 1
    line = proc.stderr.strip()
    assert line.startswith("TLS: signing the instance certificate at ") and "USE_SSL=false" in line, line
    assert {"refused": "HTTP 403", "no_container_id": "CONTAINER_ID is not set",
            "not_a_certificate": "HTTP 404"}[case] in line
    assert not (tmp_path / "tls").exists() or not any((tmp_path / "tls").iterdir())


def test_start_script_signs_the_certificate_by_default(cn_models, tmp_path):
    """USE_SSL unset = vast's default true: the start script has the certificate signed before the front
    starts, and the front advertises https."""
    from tests.fakes.vast_sign_cert import VastCertSigner

    with VastAutoscaler() as scaler, VastCertSigner() as signer:
        env = start_script_env(scaler, cn_models, tmp_path, free_port(), USE_SSL=None, FETCH_ON_START="0",
                               PRELOAD_MODEL="none", VAST_TLS_DIR=str(tmp_path / "tls"), VAST_SIGN_CERT_URL=signer.url)
        proc = start_script(env, tmp_path)
        try:
            status = scaler.wait_for(lambda s: next(iter(s.statuses), None), timeout=120,
                                     alive=lambda: proc.poll() is None)
            assert status["url"] == f"https://127.0.0.1:{env['WORKER_PORT']}"
            assert signer.requests and signer.requests[0]["query"] == {"instance_id": ["1"]}
            assert (tmp_path / "tls" / "instance.crt").is_file() and (tmp_path / "tls" / "instance.key").is_file()
            assert "TLS: instance certificate signed by vast.ai" in (tmp_path / "start.log").read_text()
        finally:
            stop_gracefully(proc)
