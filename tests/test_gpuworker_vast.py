"""`gpuworker vast ...` against the vast.ai API stand-in (tests/fakes/vast_api.py) with the SwarmUI
stand-in answering on the instance's mapped port."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.fakes.vast_api import FakeVastAPI
from tests.gpuworker_helpers import run_cli, start_swarmui

KEY = "vast-TESTKEY-9b8c7d6e5f4a"
TEMPLATE = "7a42a1fc4f8062a63bbcdbbc9cd65b42"


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    proc, url, port = start_swarmui(tmp_path_factory.mktemp("swarm"), env={"FAKE_SWARMUI_STEP_SECONDS": "0.05"})
    yield url, port
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def vast(swarm):
    with FakeVastAPI(api_key=KEY, port_map={7801: swarm[1]}, loading_after=0.1, running_after=0.4) as fake:
        yield fake


@pytest.fixture(autouse=True)
def env(vast, monkeypatch, tmp_path):
    monkeypatch.setenv("VAST_API_KEY", KEY)
    monkeypatch.setenv("VAST_URL", vast.url)
    monkeypatch.setenv("GPUWORKER_STATE_DIR", str(tmp_path / "state"))


def no_key(r) -> None:
    assert KEY not in r.out and KEY not in r.err


def create(capsys, *extra: str) -> int:
    r = run_cli(capsys, "vast", "create", *extra, "--json")
    assert r.code == 0, r.err
    no_key(r)
    return r.json["instance_id"]


def test_offers_filter_and_order(capsys, vast):
    r = run_cli(capsys, "vast", "offers", "--gpu", "RTX_4090", "--min-vram", "24", "--max-price", "0.5", "--json")
    assert r.code == 0
    assert [o["id"] for o in r.json] == [1001]  # 1002 is below the default 0.98 reliability
    r = run_cli(capsys, "vast", "offers", "--gpu", "RTX 4090", "--min-reliability", "0.9", "--json")
    assert [o["id"] for o in r.json] == [1002, 1001]  # cheapest first
    query = vast.bodies[-1]
    assert query["gpu_name"] == {"eq": "RTX 4090"} and query["order"] == [["dph_total", "asc"]]
    r = run_cli(capsys, "vast", "offers", "--min-vram", "30")
    assert r.code == 0 and "RTX 5090" in r.out and "A100" in r.out and "RTX 4090" not in r.out
    assert run_cli(capsys, "vast", "offers", "--gpu", "H200").out.strip() == "no offers match"


def test_template_instance_wait_url_destroy(capsys, vast, swarm):
    instance = create(capsys, "1005", "--template", TEMPLATE, "--label", "swarm-test")
    r = run_cli(capsys, "vast", "wait", str(instance), "--poll", "0.1", "--timeout", "30", "--json")
    assert r.code == 0, r.err
    assert r.json["url"] == swarm[0]
    assert "loading" in r.err  # the states it went through were shown
    r = run_cli(capsys, "vast", "url", str(instance))
    assert r.code == 0 and r.out.strip() == swarm[0]
    r = run_cli(capsys, "vast", "destroy", str(instance), "--json")
    assert r.json == [{"instance_id": instance, "destroyed": True, "already_gone": False}]
    assert instance in vast.destroyed
    r = run_cli(capsys, "vast", "url", str(instance))
    assert r.code == 1 and "does not exist" in r.err
    r = run_cli(capsys, "vast", "destroy", str(instance))
    assert r.code == 0 and "already gone" in r.out


def test_create_from_image_with_env_onstart_and_wait(capsys, vast, swarm, tmp_path):
    script = tmp_path / "onstart.sh"
    script.write_text("#!/bin/bash\nbash /start.sh\n")
    r = run_cli(capsys, "vast", "create", "1003", "--image", "ghcr.io/me/swarm-worker:1.0", "-e", "SWARM_TUNNEL=none",
                "-e", "HF_TOKEN=hf_abcdefghijklmnop", "--onstart-file", str(script), "--disk", "80", "--wait",
                "--poll", "0.1", "--timeout", "30", "--json")
    assert r.code == 0, r.err
    assert r.json["url"] == swarm[0]
    body = next(b for b in reversed(vast.bodies) if "image" in b)
    assert body["env"] == {"SWARM_TUNNEL": "none", "HF_TOKEN": "hf_abcdefghijklmnop", "-p 7801:7801": "1"}
    assert body["onstart"] == script.read_text() and body["disk"] == 80 and body["runtype"] == "args"
    assert "hf_abcdefghijklmnop" not in r.text
    run_cli(capsys, "vast", "destroy", str(r.json["instance_id"]))


def test_ctrl_c_while_waiting_says_the_instance_keeps_billing(capsys, vast, monkeypatch):
    from scripts.gpuworker import vast_cmds

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vast_cmds, "wait_ready", ctrl_c)
    r = run_cli(capsys, "vast", "create", "1005", "--template", TEMPLATE, "--wait", "--quiet")
    assert r.code == 130 and "interrupted" in r.err
    instance = max(vast.instances)
    assert f"instance {instance} keeps running (and billing): `gpuworker vast destroy {instance}`" in r.err
    run_cli(capsys, "vast", "destroy", str(instance))


def test_wait_and_guard_with_a_token_gated_swarmui(capsys, vast, tmp_path, monkeypatch):
    token = "gate-TOKEN-0123456789abcdef"
    proc, url, port = start_swarmui(tmp_path / "gated", required_auth=f"Bearer {token}")
    monkeypatch.setitem(vast.port_map, 7801, port)
    try:
        instance = create(capsys, "1005", "--image", "ghcr.io/me/swarm-worker:1.0", "-e",
                          f"SWARM_ACCESS_TOKEN={token}", "--max-idle", "1s", "--no-guard-process")
        r = run_cli(capsys, "vast", "wait", str(instance), "--poll", "0.1", "--timeout", "30")
        assert r.code == 1 and "behind a token gate" in r.err and "SWARM_TOKEN" in r.err
        monkeypatch.setenv("SWARM_TOKEN", token)
        r = run_cli(capsys, "vast", "wait", str(instance), "--poll", "0.1", "--timeout", "30", "--json")
        assert r.code == 0 and r.json["url"] == url
        time.sleep(1.1)
        r = run_cli(capsys, "vast", "guard", "--once", "--json")
        assert r.json[0]["action"] == "destroyed" and "SwarmUI idle" in r.json[0]["reason"]  # it answered
        assert token not in r.text
    finally:
        proc.terminate()
        proc.wait(10)


def test_bad_create_arguments(capsys, vast):
    before = len(vast.requests)
    r = run_cli(capsys, "vast", "create", "1001")
    assert r.code == 2 and "--template HASH or --image" in r.err
    r = run_cli(capsys, "vast", "create", "1001", "--image", "x", "-e", "NOVALUE")
    assert r.code == 2 and "--env: 'NOVALUE' is not KEY=VALUE" in r.err
    assert len(vast.requests) == before
    r = run_cli(capsys, "vast", "create", "999", "--image", "x")
    assert r.code == 1 and "HTTP 400" in r.err and "no longer available" in r.err
    r = run_cli(capsys, "vast", "create", "1001", "--template", "nope")
    assert r.code == 1 and "template nope not found" in r.err


def test_guard_destroys_after_max_hours(capsys, vast, tmp_path):
    instance = create(capsys, "1001", "--template", TEMPLATE, "--max-hours", "0.0001", "--no-guard-process")
    state = json.loads((tmp_path / "state" / "vast-instances.json").read_text())
    assert state[str(instance)]["max_hours"] == 0.0001
    time.sleep(0.5)
    r = run_cli(capsys, "vast", "guard", "--once", "--json")
    assert r.code == 0
    [result] = r.json
    assert result["action"] == "destroyed" and result["reason"].startswith("max_hours")
    assert instance in vast.destroyed
    assert json.loads((tmp_path / "state" / "vast-instances.json").read_text()) == {}


def test_guard_keeps_a_busy_instance_and_destroys_it_when_idle(capsys, vast, swarm):
    from common.swarmui import SyncSwarmUIClient

    instance = create(capsys, "1001", "--template", TEMPLATE, "--max-idle", "2s", "--no-guard-process")
    run_cli(capsys, "vast", "wait", str(instance), "--poll", "0.1")

    def generate():
        with SyncSwarmUIClient(swarm[0]) as c:
            c.generate({"prompt": "busy", "images": 1, "steps": 60})  # 60 x 0.05 s

    worker = threading.Thread(target=generate)
    worker.start()
    sid = requests.post(f"{swarm[0]}/API/GetNewSession", json={}).json()["session_id"]
    deadline = time.monotonic() + 10
    while requests.post(f"{swarm[0]}/API/GetGlobalStatus", json={"session_id": sid}).json()["status"]["live_gens"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(2.0)  # past the idle limit counted from creation, but SwarmUI is generating
    r = run_cli(capsys, "vast", "guard", "--once", "--json")
    assert r.json[0]["action"] == "keep"
    assert instance not in vast.destroyed
    worker.join(30)
    r = run_cli(capsys, "vast", "guard", "--once", "--json")
    assert r.json[0]["action"] == "keep"  # idle, but not for 2 s yet
    time.sleep(2.1)
    r = run_cli(capsys, "vast", "guard", "--once", "--json")
    assert r.json[0]["action"] == "destroyed" and "SwarmUI idle" in r.json[0]["reason"]
    assert instance in vast.destroyed


def test_detached_guard_process_destroys_a_forgotten_instance(capsys, vast, tmp_path):
    r = run_cli(capsys, "vast", "create", "1002", "--image", "ghcr.io/me/swarm-worker:1.0", "--max-hours", "0.0003",
                "--guard-interval", "0.2", "--json")
    assert r.code == 0, r.err
    instance, log = r.json["instance_id"], Path(r.json["guard"]["log"])
    deadline = time.monotonic() + 30
    while instance not in vast.destroyed:
        assert time.monotonic() < deadline, log.read_text() if log.exists() else "no guard log"
        time.sleep(0.1)
    deadline = time.monotonic() + 10
    while "destroyed" not in log.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert "max_hours" in log.read_text() and KEY not in log.read_text()


def test_wrong_key_and_retries(capsys, vast, monkeypatch):
    before = len(vast.requests)
    vast.inject(502, 1)
    vast.inject(429, 2, retry_after=0.05)
    r = run_cli(capsys, "vast", "offers", "--json")
    assert r.code == 0 and len(r.json) == 3  # verified, reliable, not rented
    assert len(vast.requests) - before == 4
    # renting is not resent after a 502 (it may have gone through: a second GPU would bill too)
    instances_before = len(vast.instances) + len(vast.destroyed)
    vast.inject(502, 1)
    r = run_cli(capsys, "vast", "create", "1005", "--image", "x")
    assert r.code == 1 and "HTTP 502" in r.err
    assert len(vast.instances) + len(vast.destroyed) == instances_before
    monkeypatch.setenv("VAST_API_KEY", "vast-WRONGKEY-1234567")
    r = run_cli(capsys, "vast", "offers")
    assert r.code == 1 and "HTTP 401" in r.err and "API key was refused" in r.err
    assert "vast-WRONGKEY-1234567" not in r.text
    monkeypatch.delenv("VAST_API_KEY")
    r = run_cli(capsys, "vast", "offers")
    assert r.code == 2 and "VAST_API_KEY is not set" in r.err


def test_console_script_offers(vast):
    exe = Path(sys.executable).parent / "gpuworker"
    env = {**os.environ, "VAST_API_KEY": KEY, "VAST_URL": vast.url}
    proc = subprocess.run([str(exe), "vast", "offers", "--gpu", "RTX 5090", "--json"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [o["id"] for o in json.loads(proc.stdout)] == [1003]
    assert KEY not in proc.stdout + proc.stderr
