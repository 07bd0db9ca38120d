"""The controlnet-pyworker RunPod handler through the runpod SDK: `--test_input` mode and the
real worker loop against the local job server (tests/fakes/runpod_jobs.py)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time

import pytest

from tests.controlnet_fixtures import REPO, body, png_size
from tests.fakes.runpod_jobs import RunPodJobServer, launch_handler


def run_test_input(models, job: dict, cwd, module: str = "handlers.controlnet_pyworker") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_WEBHOOK_")}
    env.update(MODELS_DIR=str(models), PYTHONPATH=str(REPO), DEVICE="cpu")
    return subprocess.run([sys.executable, "-m", module, "--test_input", json.dumps(job)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def printed_result(output: str) -> str:
    """The SDK prints `Job result: {...}` (a Python repr, cut to its first and last 2048
    characters by the SDK's logger when longer)."""
    match = re.search(r"Job result: (\{.*?)\nINFO", output, re.DOTALL)
    assert match, output[-3000:]
    return match.group(1)


def test_test_input_mode_prints_the_image(cn_models, tmp_path):
    job = json.loads((REPO / "test_inputs/controlnet-pyworker/test_input.json").read_text())
    proc = run_test_input(cn_models, job, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    printed = printed_result(out)
    assert printed.startswith("{'output': {'seed': 42, 'seeds': [42], 'model': 'lightning', 'era': 'wilderness', "
                              "'steps': 6, 'cfg': 2.0, 'scheduler': 'euler_trailing'")
    assert "'images': ['iVBORw0KGgo" in printed, "a base64 PNG"
    assert printed.rstrip().endswith("'format': 'png'}}")
    assert "'worker_version': " in printed and "'error'" not in printed
    assert "completed successfully" in out


def test_handler_module_runs_the_sdk_like_runpods_handler_py(cn_models, tmp_path):
    """`python -m handlers.controlnet_pyworker.handler --test_input ...` (RunPod's handler.py convention)."""
    proc = run_test_input(cn_models, {"input": body(seed=8, steps=1)}, tmp_path,
                          module="handlers.controlnet_pyworker.handler")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert printed_result(out).startswith("{'output': {'seed': 8, 'seeds': [8], 'model': 'lightning'")
    assert "completed successfully" in out


def test_test_input_mode_bad_input_fails_clearly(cn_models, tmp_path):
    proc = run_test_input(cn_models, {"input": body(width=100, era="medieval")}, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert "invalid_input: width: must be a multiple of 64" in out
    assert "era: unknown era 'medieval'" in out


@pytest.fixture(scope="module")
def runpod_worker(cn_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cn-runpod")
    (tmp / "volume").mkdir()
    server = RunPodJobServer().start()
    proc = launch_handler("controlnet_pyworker", server, log_path=tmp / "worker.log", cwd=tmp, env={
        "MODELS_DIR": str(cn_models), "DEVICE": "cpu", "PROGRESS_INTERVAL": "0",
        "RUNPOD_MAX_INLINE_BYTES": "400000", "VOLUME_DIR": str(tmp / "volume"),
    })
    yield server, proc, tmp / "volume"
    proc.stop()
    server.close()


def test_worker_loop_result_and_progress_per_step(runpod_worker):
    server, proc, _ = runpod_worker
    job_id = server.submit(body(seed=5, steps=4))
    rec = server.wait(job_id, 180, proc=proc)
    assert rec.status == "COMPLETED", rec.result
    assert png_size(rec.output["images"][0]) == (256, 256) and rec.output["seed"] == 5
    steps = [p for p in rec.progress if p.get("stage") == "denoising"]
    assert [p["step"] for p in steps] == [1, 2, 3, 4] and steps[-1]["percent"] == 100.0
    assert rec.progress[0]["stage"] == "queued"
    assert server.status(job_id)["status"] == "COMPLETED"
    assert not server.unauthorized


def test_cancel_stops_the_generation_and_frees_the_device(runpod_worker):
    server, proc, _ = runpod_worker
    job_id = server.submit(body(seed=9, steps=100, width=512, height=512))  # tens of seconds on CPU
    deadline = time.monotonic() + 120
    while not any(p.get("stage") == "denoising" for p in server.jobs[job_id].progress):
        assert time.monotonic() < deadline and proc.poll() is None, proc.log_tail()
        time.sleep(0.05)
    server.cancel(job_id)
    deadline = time.monotonic() + 30
    while "generation stopped after step" not in proc.log_tail(20000):
        assert time.monotonic() < deadline, f"the cancelled generation ran on\n{proc.log_tail()}"
        time.sleep(0.1)
    steps = [p["step"] for p in server.jobs[job_id].progress if p.get("stage") == "denoising"]
    assert steps and max(steps) < 100
    next_job = server.submit(body(seed=10, steps=2))  # the device is free for the next job
    rec = server.wait(next_job, 60, proc=proc)
    assert rec.status == "COMPLETED", rec.result
    assert server.status(job_id)["status"] == "CANCELLED" and proc.poll() is None

def test_worker_loop_bad_input_fails_job_not_worker(runpod_worker):
    server, proc, _ = runpod_worker
    bad = server.submit(body(steps=500))
    good = server.submit(body(seed=6, steps=2))
    rec = server.wait(bad, 60, proc=proc)
    assert rec.status == "FAILED" and rec.error.startswith("invalid_input: steps:")
    assert rec.progress == [], "validation fails before any work"
    assert server.wait(good, 120, proc=proc).status == "COMPLETED"
    assert proc.poll() is None


def test_worker_loop_refuses_results_too_big_to_return(runpod_worker):
    server, proc, _ = runpod_worker
    job_id = server.submit(body(num_images=3, seed=9, steps=2))
    rec = server.wait(job_id, 180, proc=proc)
    assert rec.status == "FAILED"
    assert "give an `output` upload spec" in rec.error and "MB" in rec.error


def test_worker_loop_uploads_to_s3_and_keeps_the_image_on_the_volume(runpod_worker, s3_server):
    import requests

    server, proc, volume = runpod_worker
    spec = {"method": "s3", "s3": s3_server.spec(presign_expiry_seconds=3600)}
    job_id = server.submit(body(seed=12, steps=2, output=spec))
    rec = server.wait(job_id, 180, proc=proc)
    assert rec.status == "COMPLETED", rec.result
    upload = rec.output["upload"]
    assert "images" not in rec.output and upload["download_method"] == "s3"
    png = requests.get(upload["download_url"], timeout=30).content
    assert png.startswith(b"\x89PNG") and len(png) == upload["size_bytes"]
    kept = volume / "controlnet-outputs" / job_id / f"{job_id}_0.png"
    assert kept.read_bytes() == png
    assert any(p.get("stage") == "uploading" for p in rec.progress)
    assert s3_server.spec()["secret_key"] not in json.dumps(rec.result) + json.dumps(rec.progress)


def test_cuda_error_fails_the_job_and_asks_for_a_fresh_worker(cn_engine, monkeypatch):
    """A CUDA error (simulated: there is no GPU here) leaves the device unusable: refresh_worker.
    An out-of-memory error does not."""
    import torch
    from diffusers import StableDiffusionXLControlNetPipeline

    from handlers.controlnet_pyworker import handler as handler_mod
    from handlers.controlnet_pyworker.engine import Engine

    engine = Engine(cn_engine.manifest, cn_engine.models_dir, device="cpu", fetch_missing=False)
    monkeypatch.setattr(handler_mod.ENGINE, "_engine", engine)

    def oom(self, *a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(StableDiffusionXLControlNetPipeline, "__call__", oom)
    out = asyncio.run(handler_mod.handler({"id": "j-oom", "input": body()}))
    assert out["error_code"] == "engine_failed" and "out of memory" in out["error"]
    assert "refresh_worker" not in out and engine.broken is None

    def illegal_access(self, *a, **k):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nCompile with TORCH_USE_CUDA_DSA")

    monkeypatch.setattr(StableDiffusionXLControlNetPipeline, "__call__", illegal_access)
    out = asyncio.run(handler_mod.handler({"id": "j-cuda", "input": body()}))
    assert out["error_code"] == "engine_failed" and out["refresh_worker"] is True
    assert "illegal memory access" in out["error"] and "TORCH_USE_CUDA_DSA" not in out["error"]


def test_demo_writes_the_generated_image(cn_models, tmp_path, monkeypatch):
    from PIL import Image

    from handlers.controlnet_pyworker import handler as handler_mod
    from scripts import demo_controlnet

    monkeypatch.setenv("MODELS_DIR", str(cn_models))  # restored afterwards; the demo sets it too
    monkeypatch.setattr(handler_mod.ENGINE, "_engine", None)
    image = demo_controlnet.main(cn_models, tmp_path / "out")
    assert image.parent == tmp_path / "out" and Image.open(image).size == (256, 256)
    assert Image.open(image.with_name(image.stem + "_depth.png")).size == (256, 256)
    summary = json.loads(image.with_suffix(".json").read_text())
    assert summary["model"] == "lightning" and summary["era"] == "wilderness" and summary["seed"] == 42


def test_failed_preload_keeps_the_worker_up_and_the_next_job_loads_again(cn_models, tmp_path):
    """No network at start: the preload fails, but the SDK loop runs (a process that exits first is
    restarted in a loop by RunPod, its job left IN_QUEUE); the job fails naming the variant; once the
    files are there, the next job loads the variant and succeeds."""
    import shutil

    from tests.fakes.hf_hub import hub

    models = tmp_path / "models"
    models.mkdir()
    with hub() as hf, RunPodJobServer() as server:  # the Hub stand-in has no such repo: every file 404s
        proc = launch_handler("controlnet_pyworker", server, log_path=tmp_path / "worker.log", cwd=tmp_path, env={
            "MODELS_DIR": str(models), "MODEL_MANIFEST": str(cn_models / "manifest.json"), "HF_ENDPOINT": hf.url,
            "DEVICE": "cpu", "PRELOAD_MODEL": "lightning", "PROGRESS_INTERVAL": "0"})
        with proc:
            first = server.wait(server.submit(body(seed=1, steps=1)), 120, proc=proc)
            assert first.status == "FAILED"
            assert first.error.startswith("download_failed: variant 'lightning': "), first.error
            assert "preload of 'lightning' failed" in proc.log()
            for entry in cn_models.iterdir():  # the files arrive (a volume is attached, the network is back)
                if entry.is_dir():
                    shutil.copytree(entry, models / entry.name, dirs_exist_ok=True)
            second = server.wait(server.submit(body(seed=2, steps=1)), 180, proc=proc)
            assert second.status == "COMPLETED", second.result
            assert png_size(second.output["images"][0]) == (256, 256) and proc.poll() is None


def test_require_cuda_refuses_the_cpu_and_asks_for_a_fresh_worker(cn_models, tmp_path):
    """The GPU image (REQUIRE_CUDA=1) on a host where CUDA is unusable: a FATAL line, jobs fail with
    the reason and `refresh_worker` (stopPod), instead of running SDXL on the CPU of a billed GPU."""
    with RunPodJobServer() as server:
        proc = launch_handler("controlnet_pyworker", server, log_path=tmp_path / "worker.log", cwd=tmp_path, env={
            "MODELS_DIR": str(cn_models), "REQUIRE_CUDA": "1", "PRELOAD_MODEL": "lightning", "DEVICE": ""})
        with proc:
            rec = server.wait(server.submit(body(seed=1, steps=1)), 120, proc=proc)
            log = proc.log()
    assert rec.status == "FAILED" and rec.stop_pod is True, rec.result
    assert rec.error.startswith("engine_failed: CUDA is unusable and REQUIRE_CUDA=1"), rec.error
    assert "FATAL: engine_failed: CUDA is unusable" in log
    assert "generate" not in json.dumps(rec.progress), "no work started"


def test_require_cuda_model_server_writes_the_fatal_line(cn_models, tmp_path):
    from tests.controlnet_fixtures import start_server, stop

    srv = start_server(tmp_path, cn_models, REQUIRE_CUDA="1", DEVICE="")
    try:
        text = srv.model_log.read_text()
    finally:
        stop(srv.proc)
    fatal = [ln for ln in text.splitlines() if ln.startswith("MODEL_SERVER_FATAL")]
    assert fatal and fatal[0].startswith("MODEL_SERVER_FATAL preload failed: variant 'lightning': engine_failed: "
                                         "CUDA is unusable and REQUIRE_CUDA=1"), text
    assert "MODEL_SERVER_READY" not in text


def test_a_jobs_secrets_never_mask_another_jobs_fields(cn_engine, monkeypatch):
    """A refused job whose secret equals `lightning` must not turn the next client's `model` into `***`,
    and job secrets are not kept after their job (the registry cannot grow with every job)."""
    from common.redaction import redact_text
    from handlers.controlnet_pyworker import handler as handler_mod
    from handlers.controlnet_pyworker.engine import Engine

    monkeypatch.setattr(handler_mod.ENGINE, "_engine", Engine(cn_engine.manifest, cn_engine.models_dir, device="cpu",
                                                       fetch_missing=False))
    for i, secret in enumerate(["lightning", *(f"job-secret-{n:04d}" for n in range(300))]):
        spec = {"method": "s3", "s3": {"bucket": "bucket", "access_key": "AKEY12", "secret_key": secret}}
        refused = asyncio.run(handler_mod.handler({"id": f"refused-{i}", "input": body(width=100, output=spec)}))
        assert refused["error_code"] == "invalid_input"
    out = asyncio.run(handler_mod.handler({"id": "next-client", "input": body(steps=1)}))
    assert "error" not in out, out
    assert out["model"] == "lightning" and out["depth_source"] == "mock_depth"
    assert redact_text("job-secret-0000 and job-secret-0299") == "job-secret-0000 and job-secret-0299"
