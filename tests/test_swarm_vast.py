"""vast.ai serverless: the image's start script in vast mode runs SwarmUI (stand-in) + the gateway on TLS +
lease control, and the real `vastai` PyWorker (.venv-vast) in front, registered with a local autoscaler
stand-in (tests/fakes/vast_autoscaler.py). The client side is what HartsyAI CloudBackends' "Vast.ai
Serverless" section does (Providers/VastAI/VastAIProvider.cs): `/route/`, `/session/create` with
`on_close_route: /lease/end`, `/lease` with the session id, `/session/end`."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import aiohttp
import pytest
import requests

from common.swarmui import SwarmUIClient
from tests.fakes.vast_autoscaler import VastAutoscaler
from tests.swarm_helpers import ROOT, free_port, worker_env
from tests.tls_helpers import client_context, self_signed_cert

VAST_PYTHON = ROOT / ".venv-vast" / "bin" / "python"
START = ROOT / "images" / "swarm-worker" / "start.sh"
pytestmark = pytest.mark.skipif(not VAST_PYTHON.exists(), reason=".venv-vast not set up (make setup)")
SESSION_COST = 100  # CloudBackends VastAIProvider.SessionCost


@pytest.fixture(scope="module")
def vast_worker(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("swarm-vast")
    cert, key = self_signed_cert(tmp / "tls")
    scaler = VastAutoscaler(endpoint="swarm-test").start()
    port, http_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONHOME"))}
    env.update(worker_env(tmp))
    env.update(scaler.worker_env(port, http_port))
    gateway = env["SWARM_PUBLIC_PORT"]
    env.update({"APP_DIR": str(ROOT), "PYTHON": sys.executable, "VAST_PYTHON": str(VAST_PYTHON),
                "PYWORKER_DIR": str(tmp), "SWARMUI_TLS_CERT": str(cert), "SWARMUI_TLS_KEY": str(key),
                "SWARM_LEASE_CONTROL_PORT": str(free_port()), "BENCHMARK_RUNS": "1", "PYTHONPATH": str(ROOT),
                f"VAST_TCP_PORT_{gateway}": gateway, "LOG_LEVEL": "info"})
    for name in ("SWARM_ACCESS_TOKEN", "SWARMUI_WORKER_TOKEN", "RUNPOD_WEBHOOK_GET_JOB", "SWARM_MODE"):
        env.pop(name, None)
    with open(tmp / "vast.log", "wb") as log:
        proc = subprocess.Popen(["bash", str(START)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        scaler.wait_for(lambda s: s.loaded_worker(), timeout=120, alive=lambda: proc.poll() is None)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        print((tmp / "vast.log").read_text()[-4000:])
        scaler.close()
        raise
    yield scaler, f"https://127.0.0.1:{gateway}", cert, proc, tmp
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        print((tmp / "vast.log").read_text()[-4000:])
        raise
    finally:
        scaler.close()


def route(scaler: VastAutoscaler) -> dict:
    r = requests.post(f"{scaler.base_url}/route/", json={"endpoint": scaler.endpoint, "api_key": scaler.api_key,
                                                         "cost": SESSION_COST}, timeout=10)
    r.raise_for_status()
    return r.json()


def open_session(grant: dict, lifetime: float) -> requests.Response:
    return requests.post(f"{grant['url']}/session/create", json={
        "auth_data": grant, "session_id": None,
        "payload": {"lifetime": lifetime, "on_close_route": "/lease/end", "on_close_payload": {}}}, timeout=10)


def lease_call(grant: dict, session_id: str | None, payload_session: str) -> requests.Response:
    return requests.post(f"{grant['url']}/lease", json={"auth_data": grant, "session_id": session_id,
                                                         "payload": {"session_id": payload_session}}, timeout=60)


def gateway_status(base: str, cert, token: str) -> int:
    async def go():
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_context(cert))) as s, s.post(
                f"{base}/API/GetNewSession", json={}, headers={"Authorization": f"Bearer {token}"}) as r:
            return r.status

    return asyncio.run(go())


def wait_revoked(base: str, cert, token: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while gateway_status(base, cert, token) != 401:
        if time.monotonic() > deadline:
            raise AssertionError("the lease's token still works after its session ended")
        time.sleep(0.2)


def test_a_vast_session_leases_the_worker_until_it_ends(vast_worker):
    scaler, base, cert, _, _ = vast_worker
    grant = route(scaler)
    created = open_session(grant, lifetime=120)
    assert created.status_code == 201, created.text
    sid = created.json()["session_id"]

    r = lease_call(grant, sid, sid)
    assert r.status_code == 200, r.text
    lease = r.json()
    # what VastAIProvider.ApplyLease requires: success, protocol >= 2, an https public_url and a token
    assert lease["success"] is True and lease["protocol"] == 2 and lease["public_url"] == base
    assert len(lease["token"]) >= 60 and lease["worker_id"]
    assert lease_call(grant, sid, sid).json()["token"] == lease["token"]  # a renewal answers the same lease

    async def generate():
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_context(cert))) as s, \
                SwarmUIClient(base, token=lease["token"], session=s) as c:
            return await c.generate({"prompt": "vast serverless", "steps": 2})

    assert asyncio.run(generate()).outputs

    second = open_session(route(scaler), lifetime=120)
    assert second.status_code == 429  # one session per worker: CloudBackends routes again, elsewhere
    forged = lease_call(route(scaler), None, "not-a-session-of-this-worker")
    assert forged.status_code == 422 and "session_id" in forged.text

    ended = requests.post(f"{grant['url']}/session/end", json={"session_id": sid, "session_auth": grant}, timeout=10)
    assert ended.status_code == 200, ended.text
    wait_revoked(base, cert, lease["token"])


def test_an_expired_session_ends_its_lease(vast_worker):
    scaler, base, cert, _, _ = vast_worker
    grant = route(scaler)
    sid = open_session(grant, lifetime=3).json()["session_id"]
    lease = lease_call(grant, sid, sid).json()
    assert lease["success"] is True and gateway_status(base, cert, lease["token"]) == 200
    wait_revoked(base, cert, lease["token"], timeout=30)  # the PyWorker's session GC, then /lease/end
    grant = route(scaler)
    sid = open_session(grant, lifetime=60).json()["session_id"]  # the worker takes a new session
    again = lease_call(grant, sid, sid).json()
    assert again["success"] is True and again["token"] != lease["token"]
    requests.post(f"{grant['url']}/session/end", json={"session_id": sid, "session_auth": grant}, timeout=10)


def test_lease_control_refuses_a_fixed_token_or_plain_http(tmp_path):
    env = {**os.environ, **worker_env(tmp_path), "PUBLIC_IPADDR": "127.0.0.1"}
    env[f"VAST_TCP_PORT_{env['SWARM_PUBLIC_PORT']}"] = env["SWARM_PUBLIC_PORT"]
    env.pop("SWARMUI_TLS_CERT", None)
    plain = subprocess.run([sys.executable, "-m", "handlers.swarm_worker.lease_control"], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert plain.returncode == 2 and "needs the gateway on TLS" in plain.stderr
    cert, key = self_signed_cert(tmp_path / "tls")
    env.update(SWARMUI_TLS_CERT=str(cert), SWARMUI_TLS_KEY=str(key), SWARMUI_WORKER_TOKEN="f" * 40)
    fixed = subprocess.run([sys.executable, "-m", "handlers.swarm_worker.lease_control"], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert fixed.returncode == 2 and "would outlive every lease" in fixed.stderr


def test_vast_requirements_match_the_shared_dev_venv():
    def pins(path):
        return [line for line in path.read_text().splitlines() if line and not line.startswith("#")]

    assert pins(ROOT / "images/swarm-worker/requirements-vast.txt") == pins(
        ROOT / "images/controlnet-pyworker/requirements-vast.txt")


def test_vast_front_runs_in_its_own_venv_and_agrees_on_the_benchmark():
    out = subprocess.run([str(VAST_PYTHON), "-c", "import handlers.swarm_worker.vast as v; print(v.BENCH_WORKLOAD)"],
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                         timeout=60)
    from handlers.swarm_worker.lease_control import BENCH_WORKLOAD

    assert out.returncode == 0, out.stderr
    assert float(out.stdout) == BENCH_WORKLOAD


# -- the instance certificate (vast's launcher asks for it; this image replaces that launcher) ----------------------


def test_the_gateway_serves_the_instance_certificate_vast_signs(tmp_path, monkeypatch):
    """common.vast_tls (what start.sh runs on vast.ai) writes a pair the gateway's config picks up and loads."""
    from cryptography import x509

    from handlers.swarm_worker import config
    from tests.fakes.vast_sign_cert import VastCertSigner

    env = {**os.environ, "CONTAINER_ID": "4242", "VAST_TLS_DIR": str(tmp_path / "etc"), "PYTHONPATH": str(ROOT)}
    with VastCertSigner() as signer:
        env["VAST_SIGN_CERT_URL"] = signer.url
        made = subprocess.run([sys.executable, "-m", "common.vast_tls"], env=env, capture_output=True, text=True,
                              timeout=120)
    assert made.returncode == 0, made.stderr
    monkeypatch.setattr(config, "VAST_INSTANCE_CERT", tmp_path / "etc" / "instance.crt")
    monkeypatch.setattr(config, "VAST_INSTANCE_KEY", tmp_path / "etc" / "instance.key")
    for name in ("SWARMUI_TLS_CERT", "SWARMUI_TLS_KEY", "SWARMUI_TLS", "SWARM_ACCESS_TOKEN", "SWARMUI_WORKER_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    cfg = config.WorkerConfig.from_env()
    assert cfg.tls_cert == tmp_path / "etc" / "instance.crt" and cfg.server_ssl_context() is not None
    issued = x509.load_pem_x509_certificate(cfg.tls_cert.read_bytes())
    assert issued.issuer == signer.ca_cert.subject
