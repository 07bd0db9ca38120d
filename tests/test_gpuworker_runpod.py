"""`gpuworker runpod ...` against the RunPod endpoint API stand-in (tests/fakes/runpod_api.py)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fakes.runpod_api import FakeRunPodAPI
from tests.gpuworker_helpers import run_cli

KEY = "rp-TESTKEY-5f2a9c81d7e3"
SIGNED = "https://bucket.example/lora.zip?X-Amz-Signature=abcdef123456&X-Amz-Credential=AKIAX"


def trainer(job_input, ctx):
    for stage, percent, message in (("download", 10, "dataset 3/3"), ("train", 50, "epoch 5/10 loss 0.1234"),
                                    ("upload", 95, "uploading lora.zip")):
        ctx.progress({"stage": stage, "percent": percent, "message": message})
        time.sleep(0.3)
    return {"status": "success", "job_id": ctx.id, "epochs_completed": 10,
            "output": {"download_url": SIGNED, "download_method": "s3", "expires_in_days": 7}}


def slow(job_input, ctx):
    ctx.sleep(float(job_input.get("seconds", 30)))
    return {"slept": True}


def generator(job_input, ctx):
    for i in range(3):
        ctx.stream({"chunk": i})
        time.sleep(0.05)
    return [{"chunk": i} for i in range(3)]


def boom(job_input, ctx):
    raise ValueError("dataset.images_url: the archive is not a zip")


ENDPOINTS = {
    "trainer": trainer,
    "echo": lambda job_input, ctx: {"echo": job_input},
    "slow": slow,
    "gen": generator,
    "boom": boom,
    "bad": lambda job_input, ctx: {"error": "invalid_input: dataset.type: must be images, videos or both"},
}


@pytest.fixture(scope="module")
def api():
    with FakeRunPodAPI(api_key=KEY, runsync_wait_ms=3000) as fake:
        for name, fn in ENDPOINTS.items():
            fake.add_endpoint(name, fn)
        yield fake


@pytest.fixture(autouse=True)
def env(api, monkeypatch):
    monkeypatch.setenv("RUNPOD_API_KEY", KEY)
    monkeypatch.setenv("RUNPOD_ENDPOINT_BASE_URL", api.url)


def no_key(result) -> None:
    assert KEY not in result.out and KEY not in result.err


def test_trainer_job_followed_to_completion_prints_the_download_url(capsys):
    r = run_cli(capsys, "runpod", "run", "trainer", "--data", '{"model_type": "sdxl"}', "--follow", "--poll", "0.05")
    assert r.code == 0, r.err
    assert f"download: {SIGNED}" in r.out  # the signed link is the point: not masked
    assert "COMPLETED" in r.out
    # progress updates shown as they arrived (no terminal here, so as lines on stderr)
    assert "[train] 50% epoch 5/10 loss 0.1234" in r.err and "[upload] 95%" in r.err
    no_key(r)


def test_following_rides_out_a_network_outage(api, capsys):
    """Lost answers while following a long job are polled through (and said), not the end of the follow."""
    r = run_cli(capsys, "runpod", "run", "slow", "--data", '{"seconds": 1}', "--json")
    job_id = r.json["id"]
    api.inject(0, 4)  # more lost answers in a row than one call's quick retries
    r = run_cli(capsys, "runpod", "status", "slow", job_id, "--wait", "--poll", "0.05", "--json")
    assert r.code == 0, r.err
    assert r.json["status"] == "COMPLETED"
    assert "polling on through the outage" in r.err and "reachable again" in r.err


def test_async_run_then_status_wait_json(capsys, tmp_path):
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps({"input": {"model_type": "sdxl"}, "policy": {"executionTimeout": 900000}}))
    r = run_cli(capsys, "runpod", "run", "trainer", "--input", str(job_file), "--json")
    assert r.code == 0
    job = r.json
    assert job["status"] == "IN_QUEUE" and job["id"]
    early = run_cli(capsys, "runpod", "status", "trainer", job["id"], "--json")
    assert early.code == 0 and early.json["status"] in ("IN_QUEUE", "IN_PROGRESS")
    done = run_cli(capsys, "runpod", "status", "trainer", job["id"], "--wait", "--poll", "0.05", "--json")
    assert done.code == 0
    body = done.json
    assert body["status"] == "COMPLETED" and body["download_url"] == SIGNED
    assert body["output"]["epochs_completed"] == 10 and body["executionTime"] >= 300
    no_key(done)


def test_ctrl_c_while_following_says_the_job_keeps_running(api, capsys, monkeypatch):
    from scripts.gpuworker.runpod_api import Endpoint

    real_status, calls = Endpoint.status, []

    def status_then_ctrl_c(self, job_id):
        calls.append(job_id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_status(self, job_id)

    monkeypatch.setattr(Endpoint, "status", status_then_ctrl_c)
    r = run_cli(capsys, "runpod", "run", "slow", "--data", '{"seconds": 30}', "--follow", "--poll", "0.05", "--quiet")
    job_id = calls[0]
    assert r.code == 130 and "interrupted" in r.err
    assert f"job {job_id} keeps running on RunPod: cancel it with `gpuworker runpod cancel slow {job_id}`" in r.err
    assert api.jobs[job_id].status in ("IN_QUEUE", "IN_PROGRESS")  # Ctrl-C stops following, not the job
    monkeypatch.setattr(Endpoint, "status", real_status)
    assert run_cli(capsys, "runpod", "cancel", "slow", job_id).code == 0


def test_input_from_stdin_is_wrapped_in_input(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"prompt": "a cat"}'))
    r = run_cli(capsys, "runpod", "runsync", "echo", "--input", "-", "--json")
    assert r.code == 0
    assert r.json["status"] == "COMPLETED" and r.json["output"] == {"echo": {"prompt": "a cat"}}


def test_runsync_that_outlives_the_wait_is_followed(capsys):
    r = run_cli(capsys, "runpod", "runsync", "slow", "--data", '{"seconds": 1.5}', "--wait-ms", "1000",
                "--poll", "0.05", "--json")
    assert r.code == 0, r.err
    assert r.json["status"] == "COMPLETED" and r.json["output"] == {"slept": True}
    assert "still IN_PROGRESS when /runsync returned" in r.err


def test_raised_exception_is_shown_as_a_clean_message(capsys):
    r = run_cli(capsys, "runpod", "runsync", "boom", "--data", "{}")
    assert r.code == 1
    assert "error: ValueError: dataset.images_url: the archive is not a zip" in r.out
    assert "Traceback" not in r.text and "error_traceback" not in r.text
    j = run_cli(capsys, "runpod", "runsync", "boom", "--data", "{}", "--json")
    assert j.code == 1 and j.json["error_message"] == "ValueError: dataset.images_url: the archive is not a zip"


def test_error_string_result_fails(capsys):
    r = run_cli(capsys, "runpod", "runsync", "bad", "--data", "{}")
    assert r.code == 1
    assert "error: invalid_input: dataset.type: must be images, videos or both" in r.out


def test_stream_follows_streamed_items(capsys):
    job = run_cli(capsys, "runpod", "run", "gen", "--data", "{}", "--json").json
    r = run_cli(capsys, "runpod", "stream", "gen", job["id"], "--poll", "0.05", "--json")
    assert r.code == 0
    assert r.json["stream"] == [{"chunk": 0}, {"chunk": 1}, {"chunk": 2}]
    assert r.json["status"] == "COMPLETED"


def test_cancel_health_and_purge_queue(api, capsys):
    running = run_cli(capsys, "runpod", "run", "slow", "--data", '{"seconds": 30}', "--json").json["id"]
    queued = [run_cli(capsys, "runpod", "run", "slow", "--data", '{"seconds": 30}', "--json").json["id"]
              for _ in range(2)]
    deadline = time.monotonic() + 5
    while api.jobs[running].status != "IN_PROGRESS" and time.monotonic() < deadline:
        time.sleep(0.02)
    health = run_cli(capsys, "runpod", "health", "slow", "--json")
    assert health.code == 0
    assert health.json["jobs"]["inProgress"] == 1 and health.json["jobs"]["inQueue"] == 2
    text = run_cli(capsys, "runpod", "health", "slow")
    assert "inQueue 2" in text.out and "running 1" in text.out
    purged = run_cli(capsys, "runpod", "purge-queue", "slow", "--json")
    assert purged.json == {"removed": 2, "status": "completed"}
    assert all(api.jobs[j].status == "CANCELLED" for j in queued)
    cancelled = run_cli(capsys, "runpod", "cancel", "slow", running)
    assert cancelled.code == 0 and "CANCELLED" in cancelled.out
    after = run_cli(capsys, "runpod", "status", "slow", running)
    assert after.code == 1 and "CANCELLED" in after.out


def test_429_and_5xx_are_retried(api, capsys):
    before = len(api.requests)
    api.inject(502, 1)
    api.inject(429, 2, retry_after=0.1)
    r = run_cli(capsys, "runpod", "health", "echo", "--json")
    assert r.code == 0 and "jobs" in r.json
    assert len(api.requests) - before == 4


def test_submitting_is_not_blindly_retried(api, capsys):
    """A 502 on /run may mean the job was accepted: no second submission. 429/503 were not processed."""
    jobs_before = len(api.jobs)
    api.inject(429, 1, retry_after=0.05)
    api.inject(503, 1, retry_after=0.05)
    r = run_cli(capsys, "runpod", "run", "echo", "--data", "{}", "--json")
    assert r.code == 0 and len(api.jobs) == jobs_before + 1
    api.inject(502, 1)
    r = run_cli(capsys, "runpod", "run", "echo", "--data", "{}")
    assert r.code == 1 and "HTTP 502" in r.err
    assert len(api.jobs) == jobs_before + 1


def test_wrong_key_is_refused_and_never_printed(capsys, monkeypatch):
    wrong = "rp-WRONGKEY-77aa11bb22"
    monkeypatch.setenv("RUNPOD_API_KEY", wrong)
    r = run_cli(capsys, "runpod", "runsync", "echo", "--data", "{}")
    assert r.code == 1
    assert "HTTP 401" in r.err and "API key was refused" in r.err
    assert wrong not in r.text
    j = run_cli(capsys, "runpod", "status", "echo", "some-job", "--json")
    assert j.code == 1 and j.json["exit_code"] == 1 and "API key was refused" in j.json["error"]
    assert wrong not in j.text


def test_missing_key_and_bad_input_fail_before_any_request(api, capsys, monkeypatch, tmp_path):
    before = len(api.requests)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = run_cli(capsys, "runpod", "run", "echo", "--input", str(bad))
    assert r.code == 2 and f"{bad}: not valid JSON" in r.err
    r = run_cli(capsys, "runpod", "run", "echo", "--input", str(tmp_path / "missing.json"))
    assert r.code == 2 and "is not a file" in r.err
    r = run_cli(capsys, "runpod", "run", "echo", "--data", "[1, 2]")
    assert r.code == 2 and "must be a JSON object" in r.err
    monkeypatch.delenv("RUNPOD_API_KEY")
    r = run_cli(capsys, "runpod", "health", "echo")
    assert r.code == 2 and "RUNPOD_API_KEY is not set" in r.err
    assert len(api.requests) == before


def test_console_script_in_a_subprocess(api, tmp_path):
    exe = Path(sys.executable).parent / "gpuworker"
    env = {**os.environ, "RUNPOD_API_KEY": KEY, "RUNPOD_ENDPOINT_BASE_URL": api.url}
    proc = subprocess.run([str(exe), "runpod", "run", "trainer", "--data", "{}", "--follow", "--poll", "0.05"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"download: {SIGNED}" in proc.stdout
    assert KEY not in proc.stdout + proc.stderr
    proc = subprocess.run([str(exe), "runpod", "runsync", "boom", "--data", "{}"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 1 and "ValueError: dataset.images_url" in proc.stdout


def test_progress_bar_on_a_terminal(capsys, monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich treats stderr as a terminal
    r = run_cli(capsys, "runpod", "run", "trainer", "--data", "{}", "--follow", "--poll", "0.05")
    assert r.code == 0
    assert "━" in r.err and "completed" in r.err and "100.0%" in r.err
    assert "[train] 50%" not in r.err  # the bar replaces the plain progress lines
    assert f"download: {SIGNED}" in r.out
