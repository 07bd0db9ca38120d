"""`gpuworker swarm ...`: waking the real swarm-worker handler behind the RunPod endpoint API stand-in,
then image-to-video through its gateway URL into the SwarmUI stand-in; generate/i2v against a
SwarmUI URL directly; clean errors."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from functools import partial

import pytest

from handlers.swarm_worker.runtime import get_runtime
from tests.fakes import swarmui as fake_swarm
from tests.fakes.http_files import FileServer, Route
from tests.fakes.runpod_api import FakeRunPodAPI
from tests.gpuworker_helpers import ROOT, run_cli, start_swarmui
from tests.swarm_helpers import assert_token_revoked, configured_worker

KEY = "rp-SWARMKEY-a1b2c3d4e5f6"
PNG = fake_swarm.tiny_png(7)
VIDEO_MODEL = "Wan/wan2.2_i2v_high_noise_14B_fp8"
SWAP_MODEL = "Wan/wan2.2_i2v_low_noise_14B_fp8"


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    proc, url, _ = start_swarmui(tmp_path_factory.mktemp("swarm"))
    yield url
    proc.terminate()
    proc.wait(10)


def swarm_worker_job(job_input, ctx, *, publish: str = "stream"):
    """The real swarm-worker handler as the RunPod worker loop runs it. A lease's first output goes to
    the job's stream (what the SDK's stream POST does on RunPod), or only to its progress (`/status`),
    and a cancel reaches it as CancelledError."""
    from handlers.swarm_worker.actions import lease_session
    from handlers.swarm_worker.handler import handler

    if job_input.get("action") != "lease":
        return asyncio.run(handler({"id": ctx.id, "input": job_input}))

    async def lease() -> dict:
        async def cancel_on_request(task: asyncio.Task) -> None:
            while not ctx.cancelled.is_set():
                await asyncio.sleep(0.05)
            task.cancel()

        watcher = asyncio.create_task(cancel_on_request(asyncio.current_task()))
        last: dict = {}
        try:
            async for item in lease_session({"id": ctx.id, "input": job_input}):
                if not last and item.get("token"):
                    ctx.stream(item) if publish == "stream" else ctx.progress(item)
                last = item
        finally:
            watcher.cancel()
        return last

    try:
        return asyncio.run(lease())
    except asyncio.CancelledError:
        return {"released": True, "reason": "cancelled"}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """`swarm`: the real swarm-worker handler (SwarmUI stand-in behind its gateway); others: scripted."""
    def scripted_failing(job_input, ctx):
        if job_input.get("action") == "keepalive":
            ctx.sleep(30)
            return {"success": True}
        if job_input.get("action") == "lease":
            return {"released": True, "reason": "swarmui_failed", "success": False,
                    "error": "engine_failed: SwarmUI did not start: port in use"}
        return {"ready": False, "public_url": None, "error": "engine_failed: SwarmUI did not start: port in use"}

    def scripted_slow(job_input, ctx):
        if job_input.get("action") in ("keepalive", "lease"):
            ctx.sleep(30)
            return {"success": True}
        return {"ready": False, "public_url": "https://pod-7801.proxy.runpod.net/t/x", "error": None}

    def scripted_busy(job_input, ctx):
        return {"success": False, "error": "this worker already holds lease 1", "error_id": "lease_busy"}

    with configured_worker(tmp_path_factory.mktemp("worker")), FakeRunPodAPI(api_key=KEY, workers=2) as fake:
        fake.add_endpoint("swarm", swarm_worker_job)
        fake.add_endpoint("swarm-progress", partial(swarm_worker_job, publish="progress"))
        fake.add_endpoint("broken", scripted_failing)
        fake.add_endpoint("cold", scripted_slow)
        fake.add_endpoint("busy", scripted_busy)
        yield fake


@pytest.fixture(autouse=True)
def env(api, monkeypatch):
    monkeypatch.setenv("RUNPOD_API_KEY", KEY)
    monkeypatch.setenv("RUNPOD_ENDPOINT_BASE_URL", api.url)
    monkeypatch.delenv("SWARM_URL", raising=False)


def wait_until_ended(api, job_id: str) -> str:
    deadline = time.monotonic() + 10
    while api.jobs[job_id].status in ("IN_QUEUE", "IN_PROGRESS") and time.monotonic() < deadline:
        time.sleep(0.05)
    return api.jobs[job_id].status


def cancel_lease(api, capsys, endpoint: str, job_id: str) -> None:
    """`gpuworker runpod cancel` the lease job, then wait until the worker has ended the lease."""
    r = run_cli(capsys, "runpod", "cancel", endpoint, job_id, "--json")
    assert r.code == 0, r.err
    assert KEY not in r.text
    assert wait_until_ended(api, job_id) == "CANCELLED"
    deadline = time.monotonic() + 10
    while get_runtime().leases.current is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert get_runtime().leases.current is None


def test_wake_leases_a_worker_i2v_through_its_url_then_cancel(api, capsys, tmp_path):
    r = run_cli(capsys, "swarm", "wake", "swarm", "--duration", "120", "--idle", "60", "--timeout", "60",
                "--poll", "0.2", "--json")
    assert r.code == 0, r.err
    info = r.json
    assert info["ready"] is True and info["protocol"] == 2 and info["worker_id"]
    assert info["url"] == f"{info['public_url']}/t/{info['token']}"  # the token of this lease, on its worker
    assert info["limits"]["idle_seconds"] == 60 and info["limits"]["max_lease_seconds"] == 120
    lease_job = info["hold_job_id"]
    assert api.jobs[lease_job].status == "IN_PROGRESS" and api.jobs[lease_job].input["action"] == "lease"
    assert f"gpuworker runpod cancel swarm {lease_job}" in r.err  # how to stop paying for it

    image = tmp_path / "start.png"
    image.write_bytes(PNG)
    r = run_cli(capsys, "swarm", "i2v", str(image), "--url", info["url"], "--prompt", "camera slowly zooms in",
                "--video-model", VIDEO_MODEL, "--swap-model", SWAP_MODEL, "-o", str(tmp_path / "clip.mp4"), "--json")
    assert r.code == 0, r.err
    report = r.json
    video = tmp_path / "clip.mp4"
    assert report["files"] == [str(video)] and video.read_bytes()[4:8] == b"ftyp"
    assert report["progress_events"] == 4  # SwarmUI ran the 4 Wan steps
    params = report["params"]
    assert (params["videoframes"], params["videocfg"], params["videosteps"]) == (81, 3.5, 4)
    assert params["initimagecreativity"] == 0 and params["videomodel"] == VIDEO_MODEL

    cancel_lease(api, capsys, "swarm", lease_job)
    assert_token_revoked(info["public_url"], info["token"])


def test_wake_reads_the_address_from_the_progress_when_the_stream_has_none(api, capsys):
    r = run_cli(capsys, "swarm", "wake", "swarm-progress", "--timeout", "60", "--poll", "0.2", "--json")
    assert r.code == 0, r.err
    assert r.json["protocol"] == 2 and r.json["url"].endswith(f"/t/{r.json['token']}")
    cancel_lease(api, capsys, "swarm-progress", r.json["hold_job_id"])


def test_wake_the_legacy_way_then_shutdown(api, capsys):
    r = run_cli(capsys, "swarm", "wake", "swarm", "--protocol", "legacy", "--duration", "120", "--interval", "0.5",
                "--timeout", "60", "--poll", "0.2", "--json")
    assert r.code == 0, r.err
    info = r.json
    assert info["ready"] is True and info["protocol"] == 1 and info["session_id"] and info["worker_id"]
    assert "/t/" in info["url"]  # the legacy gateway token path
    hold = info["hold_job_id"]
    assert api.jobs[hold].status == "IN_PROGRESS"  # the keepalive job holds the worker
    assert f"gpuworker swarm shutdown swarm --cancel {hold}" in r.err
    r = run_cli(capsys, "swarm", "shutdown", "swarm", "--cancel", hold, "--poll", "0.2", "--json")
    assert r.code == 0, r.err
    assert r.json["success"] is True and r.json["released_holds"] >= 1
    assert wait_until_ended(api, hold) in ("COMPLETED", "CANCELLED")
    assert KEY not in r.text


def test_i2v_with_endpoint_leases_generates_and_releases(api, capsys, tmp_path):
    image = tmp_path / "start.png"
    image.write_bytes(PNG)
    before = set(api.jobs)
    r = run_cli(capsys, "swarm", "i2v", str(image), "--endpoint", "swarm", "--shutdown", "--poll", "0.2",
                "--keepalive", "120", "--prompt", "waves roll in", "--video-model", VIDEO_MODEL,
                "-o", str(tmp_path / "out"), "--json")
    assert r.code == 0, r.err
    assert "/t/" in r.json["swarm_url"] and "worker released" in r.err
    [video] = r.json["files"]
    assert video.endswith(".mp4") and (tmp_path / "out").is_dir()
    [lease_job] = [api.jobs[j] for j in set(api.jobs) - before]  # one lease job, no other action sent
    assert lease_job.input["action"] == "lease" and lease_job.input["max_lease_seconds"] == 120
    assert wait_until_ended(api, lease_job.id) == "CANCELLED"  # nothing left holding a worker


def test_i2v_from_an_image_url_with_a_progress_bar(swarm, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich treats stderr as a terminal
    with FileServer() as files:
        files.add("/photos/cat.png", Route(PNG))
        r = run_cli(capsys, "swarm", "i2v", files.url("/photos/cat.png"), "--url", swarm, "--prompt", "a cat turns",
                    "--video-model", VIDEO_MODEL, "--frames", "33", "--format", "webm", "--seed", "5",
                    "-o", str(tmp_path / "out"))
    assert r.code == 0, r.err
    [saved] = list((tmp_path / "out").iterdir())
    assert saved.suffix == ".webm" and f"saved {saved}" in r.out
    assert "video" in r.err and "100.0%" in r.err and "━" in r.err


def test_ctrl_c_interrupts_the_generation_in_swarmui(swarm, tmp_path):
    from common.swarmui import SyncSwarmUIClient

    cli = subprocess.Popen([sys.executable, "-m", "scripts.gpuworker", "swarm", "generate", "--url", swarm,
                            "--prompt", "stopped by ctrl-c", "--steps", "500", "-o", str(tmp_path)],  # 5 s of steps
                           cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    with SyncSwarmUIClient(swarm) as swarmui:
        def live() -> int:
            return swarmui.global_status()["status"]["live_gens"]

        deadline = time.monotonic() + 30
        while live() == 0:
            assert time.monotonic() < deadline and cli.poll() is None, cli.communicate()
            time.sleep(0.05)
        cli.send_signal(signal.SIGINT)
        _, err = cli.communicate(timeout=30)
        assert cli.returncode == 130 and "interrupted" in err, err
        time.sleep(0.1)
        assert live() == 0  # stopped in SwarmUI, not left running its 5 s
    assert not list(tmp_path.iterdir())


def test_generate_images_into_a_folder(swarm, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SWARM_URL", swarm)
    r = run_cli(capsys, "swarm", "generate", "--prompt", "a lighthouse", "--model",
                "OfficialStableDiffusion/sd_xl_base_1.0", "--steps", "3", "--images", "2", "--param", "sampler=euler",
                "-o", str(tmp_path / "imgs"), "--json")
    assert r.code == 0, r.err
    files = sorted((tmp_path / "imgs").iterdir())
    assert len(files) == 2 and all(f.read_bytes().startswith(b"\x89PNG") for f in files)
    assert r.json["progress_events"] == 6 and r.json["params"]["sampler"] == "euler"


def test_generation_errors_are_clean(swarm, capsys, tmp_path):
    image = tmp_path / "start.png"
    image.write_bytes(PNG)
    base = ["swarm", "i2v", str(image), "--prompt", "x", "--video-model", VIDEO_MODEL]
    r = run_cli(capsys, *base, "--url", "http://127.0.0.1:1", "--frames", "0")
    assert r.code == 2 and "videoframes" in r.err  # refused before any request
    r = run_cli(capsys, "swarm", "i2v", str(tmp_path / "missing.png"), "--url", swarm, "--prompt", "x",
                "--video-model", VIDEO_MODEL)
    assert r.code == 2 and "is not a file" in r.err
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    r = run_cli(capsys, "swarm", "i2v", str(text), "--url", swarm, "--prompt", "x", "--video-model", VIDEO_MODEL)
    assert r.code == 2 and "is not a PNG, JPEG" in r.err
    r = run_cli(capsys, "swarm", "i2v", str(image), "--url", swarm, "--prompt", "x", "--video-model", "Wan/missing")
    assert r.code == 1 and "model not found" in r.err
    r = run_cli(capsys, *base)
    assert r.code == 2 and "--url URL" in r.err


@pytest.mark.parametrize("protocol", ["lease", "legacy"])
def test_wake_fails_cleanly_when_swarmui_cannot_start(capsys, protocol):
    r = run_cli(capsys, "swarm", "wake", "broken", "--protocol", protocol, "--timeout", "20", "--poll", "0.1")
    assert r.code == 1 and "SwarmUI did not start: port in use" in r.err


def test_wake_on_a_busy_worker_says_so(capsys):
    r = run_cli(capsys, "swarm", "wake", "busy", "--timeout", "20", "--poll", "0.1")
    assert r.code == 1 and "ended FAILED before its worker was ready: this worker already holds lease 1" in r.err
    assert "SWARM_WORKER_CONCURRENCY=1" in r.err


@pytest.mark.parametrize("protocol, hint", [("lease", "gpuworker runpod cancel cold"),
                                            ("legacy", "gpuworker swarm shutdown cold --cancel")])
def test_ctrl_c_while_waking_says_how_to_release_the_worker(api, capsys, monkeypatch, protocol, hint):
    from scripts.gpuworker.runpod_api import Endpoint

    def ctrl_c(self, job_id):
        raise KeyboardInterrupt

    monkeypatch.setattr(Endpoint, "status", ctrl_c)
    before = set(api.jobs)
    r = run_cli(capsys, "swarm", "wake", "cold", "--protocol", protocol, "--timeout", "20", "--poll", "0.1")
    assert r.code == 130 and "interrupted" in r.err
    [job_id] = set(api.jobs) - before
    assert f"{hint} {job_id}" in r.err and "may still" in r.err
    assert run_cli(capsys, "runpod", "cancel", "cold", job_id).code == 0


@pytest.mark.parametrize("protocol, hint", [("lease", "gpuworker runpod cancel cold"),
                                            ("legacy", "gpuworker swarm shutdown")])
def test_wake_times_out_with_exit_3(capsys, protocol, hint):
    r = run_cli(capsys, "swarm", "wake", "cold", "--protocol", protocol, "--timeout", "1.5", "--poll", "0.2")
    assert r.code == 3 and "no ready worker after 1.5 s" in r.err and hint in r.err
