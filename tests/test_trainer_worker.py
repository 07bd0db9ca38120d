"""The trainer under the runpod SDK's real worker loop (local job server): progress updates, result, cancel."""

from __future__ import annotations

import os
import time

from tests.fakes.runpod_jobs import RunPodJobServer, launch_handler
from tests.process_helpers import gone_within
from tests.test_trainer_job import image_zip, seed_weights


def _worker_env(**extra: str) -> dict[str, str]:
    keep = ("DIFFUSION_PIPE_WORKING_DIR", "DIFFUSION_PIPE_DIR", "DIFFUSION_PIPE_LAUNCHER", "TRAINER_NUM_GPUS",
            "TRAINER_HOST_RAM_GB",
            "TRAINER_KILL_GRACE_S", "TRAINER_PROGRESS_INTERVAL_S", "ALLOW_PRIVATE_DOWNLOADS", "PYTHONPATH")
    return {**{k: os.environ[k] for k in keep}, **extra}


def test_progress_and_result_through_the_worker_loop(trainer_env, dataset_server, put_server, tmp_path):
    seed_weights(trainer_env, "wan13")
    url = dataset_server.put_zip("worker.zip", image_zip(4, captioned=(0, 1, 2, 3)))
    with RunPodJobServer() as server, launch_handler(
        "diffusion_pipe_trainer", server, log_path=tmp_path / "worker.log",
        env=_worker_env(FAKE_DIFFUSION_PIPE_STEP_S="0.05"),
    ) as proc:
        job_id = server.submit({"model_type": "wan13",
                                "dataset": {"type": "precaptioned", "images_url": url, "image_repeats": 2},
                                "training": {"epochs": 2, "save_every_n_epochs": 1, "gradient_accumulation_steps": 2},
                                "output": {"upload_url": put_server.url("w.zip")}})
        rec = server.wait(job_id, timeout=120, proc=proc)
    assert rec.status == "COMPLETED", (rec.result, proc.log_tail())
    out = rec.output
    assert out["status"] == "success" and out["latest_epoch"] == "epoch2" and out["model_name"] == "Wan 1.3B"
    stages = [p["stage"] for p in rec.progress]
    assert stages[0] == "downloading" and "configs" in stages and "upload" in stages
    training = [p for p in rec.progress if p["stage"] == "training" and p.get("step")]
    assert training, rec.progress
    last = training[-1]
    assert last["total_steps"] == 8 and last["epochs"] == 2 and last["step"] == 8 and last["percent"] == 100.0
    assert isinstance(last["loss"], float) and "eta_s" in last
    assert {p["epoch"] for p in training} == {1, 2}


def test_cancel_stops_training_and_its_process_group(trainer_env, dataset_server, tmp_path):
    seed_weights(trainer_env, "sdxl")
    url = dataset_server.put_zip("cancel.zip", image_zip(2, captioned=(0, 1)))
    pidfile = tmp_path / "train.pid"
    with RunPodJobServer() as server, launch_handler(
        "diffusion_pipe_trainer", server, log_path=tmp_path / "worker.log",
        env=_worker_env(FAKE_DIFFUSION_PIPE_MODE="hang", FAKE_DIFFUSION_PIPE_PIDFILE=str(pidfile)),
    ) as proc:
        job_id = server.submit({"model_type": "sdxl", "dataset": {"type": "precaptioned", "images_url": url},
                                "training": {"gradient_accumulation_steps": 1}})
        deadline = time.monotonic() + 60
        while not any(p.get("step") for p in server.jobs[job_id].progress):
            assert time.monotonic() < deadline and proc.poll() is None, proc.log_tail()
            time.sleep(0.1)
        pid = int(pidfile.read_text())
        server.cancel(job_id)
        assert gone_within(pid, 30), f"training process {pid} survived the cancel\n{proc.log_tail()}"
        assert proc.poll() is None  # the worker itself lives on for the next job
    assert server.status(job_id)["status"] == "CANCELLED"
