"""The swarm worker as RunPod runs it: `python -m handlers.swarm_worker` in the SDK's local mode
and in its real worker loop against a local job server (tests/fakes/runpod_jobs.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.swarmui import SwarmUIClient, SwarmUIError
from tests.fakes.runpod_jobs import RunPodJobServer, launch_handler
from tests.swarm_helpers import ROOT, assert_token_revoked, running_commands, worker_env


def test_sdk_local_mode_runs_the_image_test_input(tmp_path):
    env = {**os.environ, **worker_env(tmp_path)}
    test_input = (ROOT / "test_inputs" / "swarm-worker" / "test_input.json").read_text()
    out = subprocess.run([sys.executable, "-m", "handlers.swarm_worker", "--test_input", test_input],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Job local_test completed successfully." in out.stdout
    assert "'success': True" in out.stdout and "'delivery': 'inline'" in out.stdout
    # SwarmUI went down with the worker process, and was not restarted on the way out
    assert not any(f"--port {env['SWARMUI_INTERNAL_PORT']}" in p for p in running_commands())
    assert "restarting SwarmUI" not in out.stderr
    assert json.loads(test_input)["input"]["action"] == "generate"


# -- the real worker loop ------------------------------------------------------------------------------------------


def _start_worker(tmp: Path, server: RunPodJobServer, **overrides: str):
    env = worker_env(tmp, **overrides)
    env["SWARM_PUBLIC_URL"] = f"http://127.0.0.1:{env['SWARM_PUBLIC_PORT']}"  # instead of RunPod's proxy
    proc = launch_handler("swarm_worker", server, log_path=tmp / "worker.log", env=env)
    return proc, env


@pytest.fixture(scope="module")
def loop_worker(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loop")
    with RunPodJobServer() as server:
        proc, env = _start_worker(tmp, server)
        try:
            yield server, proc, env
        finally:
            assert proc.stop(30) == 0, proc.log_tail()
    assert not any(f"--port {env['SWARMUI_INTERNAL_PORT']}" in p for p in running_commands())


def _lease_first_output(server: RunPodJobServer, job_id: str, proc, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = server.jobs[job_id]
        if rec.stream:
            return rec.stream[0]
        if rec.result is not None:
            raise AssertionError(f"lease ended before streaming: {rec.result}")
        if proc.poll() is not None:
            raise AssertionError(proc.log_tail())
        time.sleep(0.05)
    raise TimeoutError(proc.log_tail())


def test_legacy_actions_answer_as_output_objects(loop_worker):
    server, proc, env = loop_worker
    ready = server.wait(server.submit({"action": "ready"}), 30, proc=proc)
    assert ready.status == "COMPLETED" and isinstance(ready.output, dict)
    assert ready.output["ready"] is True and ready.output["session_id"]
    assert ready.output["public_url"].startswith(f"http://127.0.0.1:{env['SWARM_PUBLIC_PORT']}/t/")
    assert ready.output["worker_id"] == "worker-1"
    health = server.wait(server.submit({"action": "health"}), 30, proc=proc)
    assert health.output["healthy"] is True and health.output["protocol"] == 2
    unknown = server.wait(server.submit({"action": "dance"}), 30, proc=proc)
    assert unknown.status == "FAILED" and unknown.error == "Unknown action: dance"
    assert unknown.output["error_id"] == "unknown_action" and "lease" in unknown.output["available_actions"]


def test_legacy_extension_generation_flow(loop_worker):
    """What SwarmUI-Runpod-Serverless-Backend v2.0 does per generation, step by step."""
    server, proc, _ = loop_worker
    wake = server.wait(server.submit({"action": "wakeup", "duration": 180, "interval": 30}), 30, proc=proc)
    assert wake.status == "COMPLETED" and wake.output["success"] is True  # it awaits this job before `ready`
    ready = server.wait(server.submit({"action": "ready"}), 30, proc=proc).output
    assert ready["ready"] is True

    async def extension_calls():
        async with SwarmUIClient(ready["public_url"]) as c:  # it appends /API/... to public_url
            c._session_id = ready["session_id"]
            backends = await c.call("ListBackends", {"nonreal": True, "full_data": True})
            selected = await c.call("SelectModel", {"model": "OfficialStableDiffusion/sd_xl_base_1.0"})
            gen = await c.call("GenerateText2Image", {"images": 1, "prompt": "legacy", "steps": 3,
                                                      "model": "OfficialStableDiffusion/sd_xl_base_1.0"})
            return backends, selected, gen

    backends, selected, gen = asyncio.run(extension_calls())
    assert not any(b["status"] == "loading" for b in backends.values()) and selected["success"] is True
    assert base64.b64decode(gen["images"][0], validate=True).startswith(b"\x89PNG")  # Convert.FromBase64String
    down = server.wait(server.submit({"action": "shutdown"}), 30, proc=proc)
    assert down.status == "COMPLETED" and down.output["success"] is True


def test_shutdown_runs_beside_a_keepalive(loop_worker):
    server, proc, _ = loop_worker
    keep = server.submit({"action": "keepalive", "duration": 60, "interval": 0.2})
    deadline = time.monotonic() + 20
    while server.jobs[keep].status != "IN_PROGRESS" and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    down = server.wait(server.submit({"action": "shutdown"}), 20, proc=proc)
    assert down.output["success"] is True and down.output["released_holds"] == 1
    kept = server.wait(keep, 20, proc=proc)
    assert kept.output["reason"] == "shutdown" and kept.output["success"] is True


def test_lease_streams_its_first_output_and_releases_on_idle(loop_worker):
    server, proc, env = loop_worker
    job = server.submit({"action": "lease", "idle_seconds": 3, "startup_grace_seconds": 30,
                         "max_lease_seconds": 120})
    first = _lease_first_output(server, job, proc)
    assert first["protocol"] == 2 and first["success"] is True and first["worker_id"] == "worker-1"
    assert first["public_url"] == env["SWARM_PUBLIC_URL"] and len(first["token"]) >= 60
    assert (first["idle_seconds"], first["startup_grace_seconds"], first["max_lease_seconds"]) == (3, 30, 120)
    assert server.status(job)["status"] == "IN_PROGRESS"
    assert server.jobs[job].progress[0] == first  # /status shows it too while the lease runs

    async def generate():
        async with SwarmUIClient(first["public_url"], token=first["token"]) as c:
            return await c.generate({"prompt": "leased", "steps": 20})

    assert asyncio.run(generate()).outputs
    rec = server.wait(job, 30, proc=proc)
    assert rec.status == "COMPLETED" and rec.output["released"] is True and rec.output["reason"] == "idle"
    assert len(rec.stream) == 1

    assert_token_revoked(first["public_url"], first["token"])


def test_leased_worker_leaves_the_next_lease_in_the_queue(loop_worker):
    """At the default concurrency (8) a leased worker takes no further lease: it stays IN_QUEUE,
    where it makes RunPod start another worker, and this worker takes it once it is free."""
    server, proc, _ = loop_worker
    job = server.submit({"action": "lease", "idle_seconds": 30, "startup_grace_seconds": 4})
    _lease_first_output(server, job, proc)
    queued = server.submit({"action": "lease", "idle_seconds": 30, "startup_grace_seconds": 0.5})
    time.sleep(2)
    assert server.jobs[queued].status == "IN_QUEUE"
    assert server.wait(job, 30, proc=proc).output["reason"] == "startup_grace_expired"
    later = server.wait(queued, 30, proc=proc)
    assert later.status == "COMPLETED" and later.output["reason"] == "startup_grace_expired"


def test_leases_taken_in_one_batch_are_served_one_after_the_other(tmp_path):
    with RunPodJobServer() as server:
        first = server.submit({"action": "lease", "idle_seconds": 30, "startup_grace_seconds": 1})
        second = server.submit({"action": "lease", "idle_seconds": 30, "startup_grace_seconds": 1})
        proc, _ = _start_worker(tmp_path, server)  # its first take asks for 8 jobs: it gets both
        try:
            a, b = server.wait(first, 60, proc=proc), server.wait(second, 60, proc=proc)
        finally:
            assert proc.stop(30) == 0, proc.log_tail()
    assert abs(a.taken_at - b.taken_at) < 0.5  # one batch
    assert (a.status, b.status) == ("COMPLETED", "COMPLETED")
    assert a.stream[0]["token"] != b.stream[0]["token"] and b.stream[0]["lease"] == a.stream[0]["lease"] + 1
    assert b.done_at > a.done_at and b.output["reason"] == "startup_grace_expired"


def test_concurrency_modifier_reports_one_while_a_lease_is_taken_or_held():
    from handlers.swarm_worker.__main__ import concurrency_modifier

    class Runtime:
        cfg = type("Cfg", (), {"concurrency": 8})()
        leases = type("Leases", (), {"current": None})()
        booted = 0

        def start_background(self):
            self.booted += 1

    rt, taken = Runtime(), []
    modifier = concurrency_modifier(rt, lambda: bool(taken))
    assert modifier(1) == 8 and rt.booted == 1
    taken.append("lease job in the SDK's queue")
    assert modifier(8) == 1
    taken.clear()
    rt.leases.current = object()
    assert modifier(1) == 1
    rt.leases.current = None
    assert modifier(1) == 8 and rt.booted == 1


def test_lease_max_lifetime_does_not_cut_a_generation(loop_worker):
    server, proc, _ = loop_worker
    job = server.submit({"action": "lease", "idle_seconds": 30, "startup_grace_seconds": 30,
                         "max_lease_seconds": 0.5})
    first = _lease_first_output(server, job, proc)

    async def long_generation():
        async with SwarmUIClient(first["public_url"], token=first["token"]) as c:
            result = await c.generate({"prompt": "long", "steps": 200})  # about 2 s
            return result, time.time()

    result, finished = asyncio.run(long_generation())
    rec = server.wait(job, 30, proc=proc)
    assert result.outputs and rec.output["reason"] == "max_lifetime"
    assert rec.done_at >= finished


def test_cancelled_lease_releases_the_token(loop_worker):
    server, proc, _ = loop_worker
    job = server.submit({"action": "lease", "idle_seconds": 60, "startup_grace_seconds": 60})
    first = _lease_first_output(server, job, proc)
    server.cancel(job)

    async def probe():
        async with SwarmUIClient(first["public_url"], token=first["token"]) as c:
            await c.session_id()

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            asyncio.run(probe())
        except SwarmUIError as exc:
            assert exc.status == 401
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the cancelled lease's token still works")
    assert server.status(job)["status"] == "CANCELLED"
    health = server.wait(server.submit({"action": "health"}), 20, proc=proc)
    assert health.output["lease_active"] is False


def test_concurrency_one_leaves_queued_leases_to_other_workers(tmp_path):
    with RunPodJobServer() as server:
        proc, _ = _start_worker(tmp_path, server, SWARM_WORKER_CONCURRENCY="1")
        try:
            first = server.submit({"action": "lease", "idle_seconds": 30, "startup_grace_seconds": 3})
            _lease_first_output(server, first, proc)
            second = server.submit({"action": "lease", "idle_seconds": 30, "startup_grace_seconds": 0.5})
            time.sleep(1.5)
            assert server.jobs[second].status == "IN_QUEUE"  # still there for RunPod to scale out with
            assert server.wait(first, 30, proc=proc).output["reason"] == "startup_grace_expired"
            assert server.wait(second, 30, proc=proc).output["reason"] == "startup_grace_expired"
        finally:
            assert proc.stop(30) == 0, proc.log_tail()


def test_public_url_on_runpod(monkeypatch):
    from handlers.swarm_worker.config import WorkerConfig

    monkeypatch.delenv("SWARM_PUBLIC_URL", raising=False)
    monkeypatch.setenv("RUNPOD_POD_ID", "abc123xyz")
    monkeypatch.setenv("SWARM_PUBLIC_PORT", "7801")
    assert WorkerConfig.from_env().public_base_url() == "https://abc123xyz-7801.proxy.runpod.net"
