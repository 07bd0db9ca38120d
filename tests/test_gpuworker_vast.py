"""`gpuworker vast ...` against the vast.ai API stand-in (tests/fakes/vast_api.py) with the SwarmUI
stand-in answering on the instance's mapped port (directly, or behind vast's token proxy)."""

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

from scripts.gpuworker import http
from tests.fakes.vast_api import FakeVastAPI
from tests.fakes.vast_portal import OpenButtonProxy
from tests.gpuworker_helpers import free_port, run_cli, start_swarmui

KEY = "vast-TESTKEY-9b8c7d6e5f4a"
TEMPLATE = "7a42a1fc4f8062a63bbcdbbc9cd65b42"
IMAGE = "ghcr.io/me/swarm-worker:1.0"


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
    monkeypatch.delenv("SWARM_TOKEN", raising=False)
    monkeypatch.setattr(http, "MAX_BACKOFF", 0.01)


@pytest.fixture(autouse=True)
def cleanup(vast):
    """Every test leaves no instance behind (offers become rentable again)."""
    yield
    for instance_id in list(vast.instances):
        vast.destroy(instance_id)


def no_key(r) -> None:
    assert KEY not in r.out and KEY not in r.err


def create(capsys, *extra: str) -> int:
    r = run_cli(capsys, "vast", "create", *extra, "--json")
    assert r.code == 0, r.err
    no_key(r)
    return r.json["instance_id"]


def last_create_body(vast) -> dict:
    return next(b for b in reversed(vast.bodies) if "client_id" in b)


# -- offers ---------------------------------------------------------------------------------------------------

def test_offers_filter_and_order(capsys, vast):
    r = run_cli(capsys, "vast", "offers", "--gpu", "RTX_4090", "--min-vram", "24", "--max-price", "0.5", "--json")
    assert r.code == 0
    assert [o["id"] for o in r.json] == [1001]  # 1002 is below the default 0.98 reliability, 1006 has 40 GB
    query = vast.bodies[-1]
    assert query["reliability"] == {"gte": 0.98} and "reliability2" not in query  # the field's current name
    r = run_cli(capsys, "vast", "offers", "--gpu", "RTX 4090", "--min-reliability", "0.9", "--json")
    assert [o["id"] for o in r.json] == [1002, 1001]  # cheapest first
    query = vast.bodies[-1]
    assert query["gpu_name"] == {"eq": "RTX 4090"} and query["order"] == [["dph_total", "asc"]]
    r = run_cli(capsys, "vast", "offers", "--min-vram", "30")
    assert r.code == 0 and "RTX 5090" in r.out and "A100" in r.out and "RTX 4090" not in r.out
    assert "33 GB" in r.out and "200 GB" in r.out  # sizes as people read them
    assert run_cli(capsys, "vast", "offers", "--gpu", "H200").out.strip() == "no offers match"


def test_offers_price_and_filter_with_the_disk_create_rents(capsys, vast):
    r = run_cli(capsys, "vast", "offers", "--gpu", "RTX 4090", "--json")
    assert [o["id"] for o in r.json] == [1001]  # 1006 has 40 GB of disk, less than the 60 GB create rents
    assert vast.bodies[-1]["allocated_storage"] == 60 and vast.bodies[-1]["disk_space"] == {"gte": 60}
    assert r.json[0]["dph_total"] == pytest.approx(0.40 + 0.15 * 60 / 720)  # the price includes that disk
    r = run_cli(capsys, "vast", "offers", "--gpu", "RTX 4090", "--disk", "30", "--json")
    assert [o["id"] for o in r.json] == [1006, 1001]
    help_text = run_cli_help(capsys, "vast", "offers")
    assert "default 60" in help_text and "default 0.98" in help_text and "default 20" in help_text
    assert "default: 60 for --image" in run_cli_help(capsys, "vast", "create")


def run_cli_help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit):
        run_cli(capsys, *argv, "--help")
    return " ".join(capsys.readouterr().out.split())


# -- create: what is sent -------------------------------------------------------------------------------------

def test_template_create_sends_only_what_the_user_set(capsys, vast):
    r = run_cli(capsys, "vast", "create", "1005", "--template", TEMPLATE, "--label", "swarm-test", "--json")
    assert r.code == 0, r.err
    body = last_create_body(vast)
    assert "runtype" not in body and "disk" not in body and "onstart" not in body and "env" not in body
    inst = vast.instances[r.json["instance_id"]]  # the template's launch mode, disk and start script apply
    assert inst["image_runtype"] == "jupyter_direc ssh_direc ssh_proxy" and inst["entrypoint"] == "vast"
    assert inst["onstart"] == "entrypoint.sh" and inst["disk_space"] == 100
    assert "template SwarmUI: image vastai/swarmui:latest, launch mode jupyter, disk 100 GB, " \
           "on-start script the template's" in r.err
    r = run_cli(capsys, "vast", "create", "1001", "--template", TEMPLATE, "--disk", "120", "-e", "A=1", "--json")
    assert r.code == 0, r.err
    body = last_create_body(vast)
    assert body["disk"] == 120 and body["env"] == {"A": "1"} and "runtype" not in body
    inst = vast.instances[r.json["instance_id"]]
    assert inst["disk_space"] == 120 and ["A", "1"] in inst["extra_env"] and ["OPEN_BUTTON_TOKEN", "1"] in inst["extra_env"]
    before = len(vast.requests)
    r = run_cli(capsys, "vast", "create", "1003", "--template", "0123456789abcdef0123456789abcdef")
    assert r.code == 2 and "--template: vast.ai has no template with hash 0123456789abcdef" in r.err
    assert not [p for m, p, _ in vast.requests[before:] if m == "PUT"]  # nothing was rented


def test_onstart_keeps_the_images_entrypoint_semantics(capsys, vast, tmp_path):
    script = tmp_path / "onstart.sh"
    script.write_text("#!/bin/bash\nbash /start.sh\n")
    # no on-start script: args mode, the image's ENTRYPOINT runs as is
    instance = create(capsys, "1003", "--image", IMAGE)
    assert last_create_body(vast)["runtype"] == "args" and vast.instances[instance]["entrypoint"] == "image"
    # an on-start script: run by vast's entrypoint (ssh mode), never sent as the args-mode entrypoint
    r = run_cli(capsys, "vast", "create", "1001", "--image", IMAGE, "--onstart-file", str(script), "--json")
    assert r.code == 0, r.err
    body = last_create_body(vast)
    assert body["runtype"] == "ssh" and body["onstart"] == script.read_text()
    assert vast.instances[r.json["instance_id"]]["entrypoint"] == "vast"
    assert "the image's own ENTRYPOINT does not run" in r.err
    r = run_cli(capsys, "vast", "create", "1005", "--image", IMAGE, "--onstart", "x", "--runtype", "args")
    assert r.code == 2 and "would replace the image's ENTRYPOINT" in r.err
    # replacing the entrypoint is possible, on purpose
    instance = create(capsys, "1005", "--image", IMAGE, "--entrypoint", "bash /start.sh")
    assert last_create_body(vast)["runtype"] == "args" and vast.instances[instance]["entrypoint"] == "onstart"


def test_create_from_image_with_env_and_wait(capsys, vast, swarm):
    r = run_cli(capsys, "vast", "create", "1003", "--image", IMAGE, "-e", "SWARM_TUNNEL=none",
                "-e", "HF_TOKEN=hf_abcdefghijklmnop", "--disk", "80", "--wait",
                "--poll", "0.1", "--timeout", "30", "--json")
    assert r.code == 0, r.err
    assert r.json["url"] == swarm[0]
    body = last_create_body(vast)
    assert body["env"] == {"SWARM_TUNNEL": "none", "HF_TOKEN": "hf_abcdefghijklmnop", "-p 7801:7801": "1"}
    assert body["disk"] == 80 and body["runtype"] == "args"
    assert "hf_abcdefghijklmnop" not in r.text


def test_bad_create_arguments(capsys, vast):
    before = len(vast.requests)
    r = run_cli(capsys, "vast", "create", "1001")
    assert r.code == 2 and "--template HASH or --image" in r.err
    r = run_cli(capsys, "vast", "create", "1001", "--image", "x", "-e", "NOVALUE")
    assert r.code == 2 and "--env: 'NOVALUE' is not KEY=VALUE" in r.err
    for bad in ("-1", "0"):
        with pytest.raises(SystemExit) as exc:
            run_cli(capsys, "vast", "create", "1001", "--image", "x", "--max-hours", bad)
        assert exc.value.code == 2
        assert "--max-hours: must be more than 0" in capsys.readouterr().err
    assert len(vast.requests) == before
    r = run_cli(capsys, "vast", "create", "999", "--image", "x")
    assert r.code == 1 and "HTTP 404" in r.err and "999 is not available" in r.err


# -- create: a lost answer ------------------------------------------------------------------------------------

def test_lost_create_reply_finds_the_rented_instance(capsys, vast):
    vast.inject_create_drop()
    r = run_cli(capsys, "vast", "create", "1005", "--image", IMAGE, "--label", "lost-1", "--json")
    assert r.code == 0, r.err
    assert "no answer came back" in r.err and "vast.ai did rent it" in r.err
    assert vast.instances[r.json["instance_id"]]["label"] == "lost-1"
    assert len([b for b in vast.bodies if b.get("label") == "lost-1"]) == 1  # not rented twice


def test_lost_create_reply_says_an_instance_may_bill(capsys, vast):
    vast.inject_create_drop()
    vast.inject(500, 6, route="/api/v1/instances")  # and the look-up fails too
    r = run_cli(capsys, "vast", "create", "1005", "--image", IMAGE, "--label", "lost-2", "--json")
    assert r.code == 1
    assert "cannot connect" not in r.err
    assert "may have been rented anyway (and be billing)" in r.err and "gpuworker vast list" in r.err
    assert r.json["label"] == "lost-2" and r.json["exit_code"] == 1
    r = run_cli(capsys, "vast", "list", "--json")
    [row] = [row for row in r.json if row["label"] == "lost-2"]
    assert row["status"] in (None, "loading", "running") and row["dph_total"] > 1.2 and row["age_seconds"] >= 0
    assert "lost-2" in run_cli(capsys, "vast", "list").out


# -- wait, url, Ctrl-C and errors keep the billing hint -------------------------------------------------------

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


def test_ctrl_c_while_waiting_says_the_instance_keeps_billing(capsys, vast, monkeypatch):
    from scripts.gpuworker import vast_cmds

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vast_cmds, "wait_ready", ctrl_c)
    r = run_cli(capsys, "vast", "create", "1005", "--template", TEMPLATE, "--wait", "--quiet")
    assert r.code == 130 and "interrupted" in r.err
    instance = max(vast.instances)
    assert f"instance {instance} keeps running (and billing): `gpuworker vast destroy {instance}`" in r.err
    r = run_cli(capsys, "vast", "create", "1001", "--template", TEMPLATE, "--wait", "--json")
    assert r.code == 130
    instance = max(vast.instances)
    assert r.json["error"] == "interrupted" and r.json["exit_code"] == 130 and r.json["instance_id"] == instance
    assert "keeps running (and billing)" in r.json["hint"]


def test_ctrl_c_while_renting_says_how_to_find_the_instance(capsys, vast, monkeypatch):
    from scripts.gpuworker.vast_api import VastApi

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(VastApi, "create_instance", ctrl_c)
    r = run_cli(capsys, "vast", "create", "1005", "--image", IMAGE, "--label", "abandoned", "--json")
    assert r.code == 130 and "look for the label abandoned in `gpuworker vast list`" in r.err
    assert r.json["label"] == "abandoned" and r.json["offer_id"] == 1005


def test_api_errors_while_waiting_keep_the_billing_hint(capsys, vast):
    instance = create(capsys, "1005", "--image", IMAGE)
    vast.inject(500, 6)
    r = run_cli(capsys, "vast", "wait", str(instance), "--poll", "0.1", "--json")
    assert r.code == 1 and "HTTP 500" in r.err
    assert f"instance {instance} keeps running (and billing)" in r.err
    assert r.json["instance_id"] == instance and "billing" in r.json["error"]
    vast.set_status(instance, "exited", "container exited with code 1")
    r = run_cli(capsys, "vast", "wait", str(instance), "--poll", "0.1", "--json")
    assert r.code == 1 and "is exited: container exited with code 1" in r.err
    assert r.json["instance_id"] == instance and "keeps running (and billing)" in r.err
    r = run_cli(capsys, "vast", "create", "1003", "--image", IMAGE, "--wait", "--poll", "0.05", "--timeout", "0.2",
                "--json")  # still loading when the wait ends
    assert r.code == 3 and r.json["instance_id"] == max(vast.instances) and "keeps running" in r.json["hint"]
    instance = create(capsys, "1001", "--image", IMAGE)
    vast.set_status(instance, "offline", "host disconnected")
    r = run_cli(capsys, "vast", "wait", str(instance), "--poll", "0.1")
    assert r.code == 1 and "is offline" in r.err and f"gpuworker vast destroy {instance}" in r.err


def test_wait_timeout_is_said_in_minutes(capsys, vast, monkeypatch):
    instance = create(capsys, "1005", "--image", IMAGE)
    vast.set_status(instance, "loading", "pulling image")
    r = run_cli(capsys, "vast", "wait", str(instance), "--poll", "0.05", "--timeout", "0.2")
    assert r.code == 3 and "not ready after 0.2 s" in r.err
    from scripts.gpuworker import vast_cmds
    monkeypatch.setattr(vast_cmds.time, "monotonic", iter([0.0] + [200.0] * 10).__next__)
    r = run_cli(capsys, "vast", "wait", str(instance), "--poll", "0", "--timeout", "120")
    assert r.code == 3 and "not ready after 2 min" in r.err


# -- destroy ------------------------------------------------------------------------------------------------

def test_destroy_counts_only_success(capsys, vast):
    r = run_cli(capsys, "vast", "destroy", "12345", "--json")  # a mistyped id
    assert r.code == 1 and "no instance 12345 in your vast.ai account" in r.err
    assert r.json["results"] == [{"instance_id": 12345, "destroyed": False, "error": r.json["results"][0]["error"]}]
    instance = create(capsys, "1005", "--image", IMAGE, "--max-hours", "5", "--no-guard-process")
    vast.refuse_destroy(1, "Instance is being modified")
    r = run_cli(capsys, "vast", "destroy", str(instance))
    assert r.code == 1 and "did not destroy" in r.err and "Instance is being modified" in r.err
    assert "still billing" in r.err and instance in vast.instances
    assert str(instance) in json.loads((Path(os.environ["GPUWORKER_STATE_DIR"]) / "vast-instances.json").read_text())
    r = run_cli(capsys, "vast", "destroy", str(instance))
    assert r.code == 0 and f"instance {instance}: destroyed" in r.out
    assert json.loads((Path(os.environ["GPUWORKER_STATE_DIR"]) / "vast-instances.json").read_text()) == {}
    r = run_cli(capsys, "vast", "destroy", str(instance))
    assert r.code == 1 and f"no instance {instance}" in r.err


def test_destroy_of_a_tracked_instance_found_gone(capsys, vast):
    instance = create(capsys, "1005", "--image", IMAGE, "--max-hours", "5", "--no-guard-process")
    vast.destroy(instance)  # destroyed elsewhere (the console)
    r = run_cli(capsys, "vast", "destroy", str(instance), "--json")
    assert r.code == 0 and r.json == [{"instance_id": instance, "destroyed": True, "already_gone": True}]


def test_guard_retries_a_refused_destroy_and_tracks_until_gone(capsys, vast, monkeypatch):
    instance = create(capsys, "1001", "--template", TEMPLATE, "--max-hours", "0.0001", "--no-guard-process")
    state_file = Path(os.environ["GPUWORKER_STATE_DIR"]) / "vast-instances.json"
    time.sleep(0.5)
    vast.refuse_destroy(1)
    r = run_cli(capsys, "vast", "guard", "--once", "--json")
    assert r.json[0]["action"] == "destroy-failed" and "retrying next round" in r.json[0]["reason"]
    assert instance in vast.instances and str(instance) in json.loads(state_file.read_text())
    monkeypatch.setattr(vast, "destroy_delay", 0.5)  # vast says yes, but lists it a little longer
    r = run_cli(capsys, "vast", "guard", "--once", "--json")
    assert r.json[0]["action"] == "destroying" and str(instance) in json.loads(state_file.read_text())
    time.sleep(0.6)
    r = run_cli(capsys, "vast", "guard", "--once", "--json")
    assert r.json[0]["action"] == "destroyed" and r.json[0]["reason"].startswith("max_hours")
    assert json.loads(state_file.read_text()) == {}


# -- guard --------------------------------------------------------------------------------------------------

def test_guard_destroys_after_max_hours(capsys, vast, tmp_path):
    instance = create(capsys, "1001", "--template", TEMPLATE, "--max-hours", "0.0001", "--no-guard-process")
    state = json.loads((tmp_path / "state" / "vast-instances.json").read_text())
    assert state[str(instance)]["max_hours"] == 0.0001
    time.sleep(0.5)
    r = run_cli(capsys, "vast", "guard", "--once", "--json")
    assert r.code == 0
    [result] = r.json
    assert result["action"] == "destroyed" and result["reason"].startswith("max_hours: up 0.")
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


def test_guard_never_destroys_what_it_cannot_see_into(capsys, vast, swarm, monkeypatch, tmp_path):
    token = "obt-0123456789abcdef0123"
    with OpenButtonProxy(swarm[0], token=token) as proxy:  # vast's token proxy in front of SwarmUI
        monkeypatch.setitem(vast.port_map, 7801, proxy.port)
        instance = create(capsys, "1005", "--template", TEMPLATE, "--max-idle", "1s", "--no-guard-process")
        run_cli(capsys, "vast", "wait", str(instance), "--poll", "0.1", "--timeout", "30", "--no-app-check")
        time.sleep(1.1)
        r = run_cli(capsys, "vast", "guard", "--once", "--json")  # refused: 401, busy or not
        assert r.json[0]["action"] == "keep" and "cannot tell whether it works" in r.json[0]["note"]
        assert "401" in r.json[0]["note"] and instance not in vast.destroyed and proxy.refused >= 1
        r = run_cli(capsys, "vast", "wait", str(instance), "--poll", "0.1", "--timeout", "30")
        assert r.code == 1 and "answers 401" in r.err and "OPEN_BUTTON_TOKEN" in r.err
    monkeypatch.setenv("SWARM_TOKEN", token)
    with OpenButtonProxy(swarm[0], token=token, https=True) as proxy:  # ENABLE_HTTPS: the instance's certificate
        monkeypatch.setitem(vast.port_map, 7801, proxy.port)
        r = run_cli(capsys, "vast", "guard", "--once", "--json")
        assert r.json[0]["action"] == "keep" and "TLS certificate is not trusted" in r.json[0]["note"]
        assert instance not in vast.destroyed
        r = run_cli(capsys, "vast", "wait", str(instance), "--poll", "0.1")
        assert r.code == 1 and "TLS certificate is not trusted" in r.err
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(Path(proxy._tmp.name) / "instance.crt"))
        r = run_cli(capsys, "vast", "wait", str(instance), "--poll", "0.1", "--json")
        assert r.code == 0 and r.json["url"] == f"https://127.0.0.1:{proxy.port}"
        assert run_cli(capsys, "vast", "url", str(instance)).out.strip() == f"https://127.0.0.1:{proxy.port}"
        r = run_cli(capsys, "vast", "guard", "--once", "--json")
        assert r.json[0]["action"] == "destroyed" and "SwarmUI idle" in r.json[0]["reason"]
        assert token not in r.text
        assert proxy.clear_credentials == 0  # the token never went to the TLS port in clear


def test_wait_and_guard_with_a_token_gated_swarmui(capsys, vast, tmp_path, monkeypatch):
    token = "gate-TOKEN-0123456789abcdef"
    proc, url, port = start_swarmui(tmp_path / "gated", required_auth=f"Bearer {token}")
    monkeypatch.setitem(vast.port_map, 7801, port)
    try:
        instance = create(capsys, "1005", "--image", IMAGE, "-e",
                          f"SWARM_ACCESS_TOKEN={token}", "--max-idle", "1s", "--no-guard-process")
        r = run_cli(capsys, "vast", "wait", str(instance), "--poll", "0.1", "--timeout", "30")
        assert r.code == 1 and "token gate" in r.err and "SWARM_TOKEN" in r.err
        time.sleep(1.1)
        r = run_cli(capsys, "vast", "guard", "--once", "--json")
        assert r.json[0]["action"] == "keep" and instance not in vast.destroyed  # 401 is not idle
        monkeypatch.setenv("SWARM_TOKEN", token)
        r = run_cli(capsys, "vast", "wait", str(instance), "--poll", "0.1", "--timeout", "30", "--json")
        assert r.code == 0 and r.json["url"] == url
        r = run_cli(capsys, "vast", "guard", "--once", "--json")
        assert r.json[0]["action"] == "destroyed" and "SwarmUI idle" in r.json[0]["reason"]  # it answered
        assert token not in r.text
    finally:
        proc.terminate()
        proc.wait(10)


def test_detached_guard_process_destroys_a_forgotten_instance(capsys, vast, tmp_path):
    r = run_cli(capsys, "vast", "create", "1002", "--image", IMAGE, "--max-hours", "0.0003",
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


# -- list, logs, stop, label ----------------------------------------------------------------------------------

def test_list_logs_stop_label(capsys, vast):
    instance = create(capsys, "1005", "--image", IMAGE, "--label", "first", "--max-hours", "5", "--no-guard-process")
    r = run_cli(capsys, "vast", "label", str(instance), "renamed", "--json")
    assert r.code == 0 and vast.instances[instance]["label"] == "renamed"
    state = json.loads((Path(os.environ["GPUWORKER_STATE_DIR"]) / "vast-instances.json").read_text())
    assert state[str(instance)]["label"] == "renamed"
    r = run_cli(capsys, "vast", "label", str(instance), "x" * 1100)
    assert r.code == 1 and "label_too_long" in r.err or "1024 characters" in r.err
    r = run_cli(capsys, "vast", "list")
    assert str(instance) in r.out and "renamed" in r.out and "$/h" in r.out
    r = run_cli(capsys, "vast", "logs", str(instance), "--tail", "2")
    assert r.code == 0 and r.out.splitlines() == ["container started", "entrypoint: image"]
    r = run_cli(capsys, "vast", "logs", str(instance), "--grep", "pulling", "--json")
    assert r.json["logs"] == f"instance {instance}: pulling {IMAGE}\n"
    r = run_cli(capsys, "vast", "stop", str(instance))
    assert r.code == 0 and "disk still bills" in r.out
    assert vast.show(instance)["actual_status"] == "stopped"
    for command in (["stop", "12345"], ["label", "12345", "x"], ["logs", "12345"]):
        r = run_cli(capsys, "vast", *command)
        assert r.code == 1 and "HTTP 404" in r.err, command


def test_list_pages_through_many_instances(capsys, monkeypatch):
    offers = [{"id": 5000 + i, "machine_id": i, "gpu_name": "RTX 3090", "num_gpus": 1, "gpu_ram": 24576,
               "dph_base": 0.1, "storage_cost": 0.1, "reliability": 0.99, "disk_space": 100.0, "geolocation": "SE",
               "verified": True, "external": False, "rentable": True, "rented": False} for i in range(30)]
    with FakeVastAPI(api_key=KEY, offers=offers) as fake:
        for o in offers:
            fake.create(o["id"], {"image": "x", "label": f"n{o['id']}"})
        monkeypatch.setenv("VAST_URL", fake.url)
        r = run_cli(capsys, "vast", "list", "--json")
    assert len(r.json) == 30 and len({row["id"] for row in r.json}) == 30


# -- keys, network, flags -------------------------------------------------------------------------------------

def test_wrong_key_and_retries(capsys, vast, monkeypatch):
    before = len(vast.requests)
    vast.inject(502, 1)
    vast.inject(429, 2)  # vast's 429: plain text, no Retry-After
    r = run_cli(capsys, "vast", "offers", "--json")
    assert r.code == 0 and len(r.json) == 3  # verified, reliable, 60 GB, not rented
    assert len(vast.requests) - before == 4
    assert "HTTP 429; retrying" in r.err
    # renting is not resent after a 502 (it may have gone through: a second GPU would bill too)
    instances_before = len(vast.instances) + len(vast.destroyed)
    vast.inject(502, 1)
    r = run_cli(capsys, "vast", "create", "1005", "--image", "x")
    assert r.code == 1 and "HTTP 502" in r.err and "may have been rented anyway" in r.err
    assert len(vast.instances) + len(vast.destroyed) == instances_before
    vast.inject(429, 6)
    r = run_cli(capsys, "vast", "offers")
    assert r.code == 1 and "HTTP 429: API requests too frequent" in r.err
    monkeypatch.setenv("VAST_API_KEY", "vast-WRONGKEY-1234567")
    r = run_cli(capsys, "vast", "offers")
    assert r.code == 1 and "HTTP 401" in r.err and "API key was refused" in r.err
    assert "vast-WRONGKEY-1234567" not in r.text


def test_key_from_the_files_vastai_keeps(capsys, vast, monkeypatch, tmp_path):
    monkeypatch.delenv("VAST_API_KEY")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    r = run_cli(capsys, "vast", "offers")
    assert r.code == 2 and "no vast.ai API key" in r.err and ".config/vastai/vast_api_key" in r.err
    legacy = tmp_path / "home" / ".vast_api_key"
    legacy.parent.mkdir(parents=True)
    legacy.write_text(KEY + "\n")
    r = run_cli(capsys, "vast", "offers", "--json")
    assert r.code == 0 and len(r.json) == 3
    legacy.write_text("vast-OLD-key-000000")
    config = tmp_path / "xdg" / "vastai" / "vast_api_key"
    config.parent.mkdir(parents=True)
    config.write_text(KEY)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    r = run_cli(capsys, "vast", "offers", "--json")
    assert r.code == 0 and KEY not in r.text


def test_unreachable_host_is_named_and_given_up_on_in_seconds(capsys, monkeypatch):
    port = free_port()
    monkeypatch.setattr(http, "MAX_BACKOFF", 30.0)
    monkeypatch.setenv("VAST_URL", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    r = run_cli(capsys, "vast", "offers")
    elapsed = time.monotonic() - started
    assert r.code == 1 and f"vast.ai (127.0.0.1:{port}) /bundles/: cannot connect" in r.err
    assert "connection refused" in r.err and r.err.count("retrying in") == 2
    assert elapsed < 10


def test_json_anywhere_on_the_line(capsys, vast):
    for argv in (["--json", "vast", "offers", "--gpu", "RTX 5090"], ["vast", "--json", "offers", "--gpu", "RTX 5090"],
                 ["vast", "offers", "--json", "--gpu", "RTX 5090"]):
        r = run_cli(capsys, *argv)
        assert r.code == 0 and [o["id"] for o in r.json] == [1003], argv
    r = run_cli(capsys, "--json", "vast", "url", "12345")
    assert r.code == 1 and r.json["instance_id"] == 12345 and "does not exist" in r.json["error"]


def test_console_script_offers(vast):
    exe = Path(sys.executable).parent / "gpuworker"
    env = {**os.environ, "VAST_API_KEY": KEY, "VAST_URL": vast.url}
    proc = subprocess.run([str(exe), "vast", "offers", "--gpu", "RTX 5090", "--json"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [o["id"] for o in json.loads(proc.stdout)] == [1003]
    assert KEY not in proc.stdout + proc.stderr


def test_durations_and_sizes_as_people_read_them():
    from scripts.gpuworker import units

    assert [units.duration(s) for s in (0.25, 45, 120, 5400, 3 * 86400)] == \
        ["0.2 s", "45 s", "2 min", "1 h 30 min", "3.0 days"]
    assert [units.size_gb(g) for g in (24.564, 8, 1.5, 1500)] == ["25 GB", "8 GB", "1.5 GB", "1.5 TB"]
