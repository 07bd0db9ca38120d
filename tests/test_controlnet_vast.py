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

VAST_PYTHON = REPO / ".venv-vast" / "bin" / "python"
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


def test_fatal_line_marks_the_worker_errored(tmp_path):
    """The server's MODEL_SERVER_FATAL line (preload failed) is reported to the autoscaler as an error."""
    model_log = tmp_path / "model_server.log"
    model_log.write_text("model server starting\nMODEL_SERVER_FATAL preload of 'lightning' failed: no GPU\n")
    with VastAutoscaler() as scaler:
        proc, _ = start_front(scaler, tmp_path, model_log=model_log, model_port=free_port())
        try:
            status = scaler.wait_for(lambda s: next((x for x in s.statuses if x.get("error_msg")), None),
                                     timeout=60, alive=lambda: proc.poll() is None)
        finally:
            stop(proc)
    assert "MODEL_SERVER_FATAL" in status["error_msg"] and scaler.loaded_worker() is None


def test_start_script_runs_server_and_front(cn_models, tmp_path):
    """images/controlnet-pyworker/start.sh in vast mode: fetch check, model server, front; a second
    start on the same instance backs off; SIGTERM stops both."""
    import signal

    from handlers.controlnet_pyworker import workload

    port, http_port, model_port = free_port(), free_port(), free_port()
    with VastAutoscaler() as scaler:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
        env.update(scaler.worker_env(port, http_port))
        env.update(CONTROLNET_MODE="vast", APP_DIR=str(REPO), PYTHON=sys.executable, VAST_PYTHON=str(VAST_PYTHON),
                   MODELS_DIR=str(cn_models), MODEL_LOG=str(tmp_path / "logs" / "model_server.log"),
                   MODEL_SERVER_HOST="127.0.0.1", MODEL_SERVER_PORT=str(model_port), DEVICE="cpu",
                   PYWORKER_DIR=str(tmp_path / "pyworker"), CONTROLNET_LOCK_FILE=str(tmp_path / "lock"),
                   BENCHMARK_SIZE="256", BENCHMARK_RUNS="1")
        script = str(REPO / "images/controlnet-pyworker/start.sh")
        with open(tmp_path / "start.log", "wb") as log:
            proc = subprocess.Popen(["bash", script], env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            scaler.wait_for(lambda s: s.loaded_worker(), timeout=120, alive=lambda: proc.poll() is None)
            second = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=30)
            assert second.returncode == 0 and "already running" in second.stderr
            payload = body(seed=3)
            auth = route(scaler, workload.units(payload))
            r = requests.post(f"{scaler.loaded_worker()['url']}/generate",
                              json={"auth_data": auth, "payload": payload}, timeout=120)
            assert r.status_code == 200 and png_size(r.json()["images"][0]) == (256, 256)
            assert (tmp_path / "pyworker" / ".has_benchmark").is_file()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                raise
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{model_port}/ping", timeout=2)
