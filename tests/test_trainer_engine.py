"""The training runner against the labeled diffusion-pipe stand-in: log parsing, crash, hang, cancel."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from common.jobs import JobError
from handlers.diffusion_pipe_trainer import configs, training
from handlers.diffusion_pipe_trainer.models import REGISTRY
from handlers.diffusion_pipe_trainer.outputs import latest_lora
from handlers.diffusion_pipe_trainer.schema import parse_request
from handlers.diffusion_pipe_trainer.train_log import TrainProgress, steps_per_epoch_estimate

FAKE = Path(__file__).parent / "fakes" / "diffusion_pipe_train.py"


def use_stand_in(monkeypatch, engine: Path) -> None:
    """Point the runner at the stand-in; `engine` plays DIFFUSION_PIPE_DIR (it must hold a train.py)."""
    engine.mkdir(exist_ok=True)
    (engine / "train.py").write_text("# diffusion-pipe's entry point would be here; the stand-in launcher runs\n")
    monkeypatch.setenv("DIFFUSION_PIPE_DIR", str(engine))
    monkeypatch.setenv("DIFFUSION_PIPE_LAUNCHER", f"{sys.executable} {FAKE}")
    monkeypatch.setenv("TRAINER_KILL_GRACE_S", "3")
    monkeypatch.setenv("TRAINER_NUM_GPUS", "1")


@pytest.fixture
def engine(tmp_path, monkeypatch):
    use_stand_in(monkeypatch, tmp_path / "diffusion-pipe")
    return tmp_path / "diffusion-pipe"


def make_job(tmp_path: Path, model_type: str, training: dict, n_images: int = 6, captions: int | None = None):
    images = tmp_path / "dataset" / "images"
    images.mkdir(parents=True)
    for i in range(n_images):
        (images / f"img{i}.png").write_bytes(b"png")
        if captions is None or i < captions:
            (images / f"img{i}.txt").write_text(f"ohwx, picture {i}")
    req = parse_request({"model_type": model_type, "dataset": {"type": "precaptioned", "images_url": "https://e/x.zip"},
                         "training": training, "api_keys": {"huggingface_token": "hf_testtoken123"}})
    spec = REGISTRY[model_type]
    cfg = configs.build_config(spec, req.training, models_dir=tmp_path / "models", output_dir=tmp_path / "out",
                               dataset_toml=tmp_path / "config" / "dataset.toml")
    ds = configs.build_dataset(spec, req.training, configs.DatasetDirs(images, None, 1, 1))
    configs.write_configs(tmp_path / "config", cfg, ds)
    steps = steps_per_epoch_estimate([(n_images, 1)], 1, req.training.batch_size, req.training.gradient_accumulation_steps)
    return tmp_path / "config" / "config.toml", TrainProgress(req.training.epochs, steps), spec


def run(cfg: Path, tp: TrainProgress, tmp_path: Path, **kw):
    updates = []
    result = asyncio.run(training.run(cfg, progress=tp, log_file=tmp_path / "train.log",
                                      on_update=lambda p: updates.append(p.report() | {"pct": p.percent()}), **kw))
    return result, updates


@pytest.mark.parametrize("model_type", ["sdxl", "flux", "qwen"])
def test_success_parses_progress_and_finds_the_lora(engine, tmp_path, model_type):
    cfg, tp, spec = make_job(tmp_path, model_type, {"epochs": 3, "save_every_n_epochs": 2,
                                                    "gradient_accumulation_steps": 2})
    assert tp.steps_per_epoch == 3
    tp, updates = run(cfg, tp, tmp_path)
    assert tp.completed and tp.epoch == 3 and tp.step == 9 and tp.total_steps == 9
    assert tp.saved == ["epoch2", "epoch3"]
    assert updates[-1]["pct"] == 100.0 and updates[-1]["loss"] is not None
    assert [u["step"] for u in updates if "step" in u and u["step"]][:3] == [1, 2, 3]
    lora = latest_lora(tmp_path / "out", spec.lora_file)
    assert lora.name == "epoch3" and lora.file.name == spec.lora_file
    assert (lora.directory.parent / "latest").read_text() == "global_step9"  # DeepSpeed state exists ...
    assert "global_step" not in str(lora.file)  # ... but is never what gets delivered
    log = (tmp_path / "train.log").read_text()
    assert "Global batch size = 2" in log and "TRAINING COMPLETE!" in log


def test_estimate_is_recalibrated_at_epoch_two(engine, tmp_path):
    cfg, tp, _ = make_job(tmp_path, "sdxl", {"epochs": 2, "gradient_accumulation_steps": 1})
    tp.steps_per_epoch = 100  # a wrong estimate: the log's "Started new epoch: 2" corrects it
    tp, _ = run(cfg, tp, tmp_path)
    assert tp.steps_per_epoch == 6 and tp.total_steps == 12 and tp.percent() == 100.0


def test_estimate_follows_the_global_batch_size_of_data_parallel_runs():
    tp = TrainProgress(epochs=2, steps_per_epoch=10, dataset_dirs=[(40, 1), (10, 2)], n_resolutions=1)
    tp.feed("Global batch size = 8")  # e.g. micro batch 1 x accumulation 4 x 2 GPUs
    assert tp.steps_per_epoch == 40 // 8 + 20 // 8 and tp.total_steps == 14


def test_media_without_captions_are_what_the_engine_skips(engine, tmp_path):
    cfg, tp, _ = make_job(tmp_path, "sdxl", {"epochs": 1, "gradient_accumulation_steps": 1}, n_images=4, captions=3)
    run(cfg, tp, tmp_path)
    assert "Cound not find caption for" in (tmp_path / "train.log").read_text()


def test_crash_mid_epoch_is_engine_failed_with_the_log_tail(engine, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_DIFFUSION_PIPE_MODE", "crash")
    cfg, tp, _ = make_job(tmp_path, "sdxl", {"epochs": 3, "gradient_accumulation_steps": 1})
    with pytest.raises(JobError) as ei:
        run(cfg, tp, tmp_path)
    err = ei.value
    assert err.code == "engine_failed" and "exited with code 1" in err.message
    assert "GPU ran out of memory" in err.message
    assert any("CUDA out of memory" in line for line in err.details)
    assert any("exits with return code = 1" in line for line in err.details)
    assert tp.epoch == 2


def _dead(pid: int) -> bool:
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # a killed child is reaped by init; until then it may still show up briefly
        if Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return True
        time.sleep(0.1)
    return False


def test_hang_past_timeout_kills_the_whole_process_group(engine, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_DIFFUSION_PIPE_MODE", "hang")
    monkeypatch.setenv("FAKE_DIFFUSION_PIPE_PIDFILE", str(tmp_path / "train.pid"))
    cfg, tp, _ = make_job(tmp_path, "sdxl", {"epochs": 3, "gradient_accumulation_steps": 1})
    with pytest.raises(JobError) as ei:
        run(cfg, tp, tmp_path, timeout_s=3)
    assert ei.value.code == "timeout" and "time limit of 3 s" in ei.value.message
    assert "resume" in ei.value.message
    assert _dead(int((tmp_path / "train.pid").read_text()))  # the launcher's child, not just the launcher


def test_cancellation_kills_the_process_group(engine, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_DIFFUSION_PIPE_MODE", "hang")
    pidfile = tmp_path / "train.pid"
    monkeypatch.setenv("FAKE_DIFFUSION_PIPE_PIDFILE", str(pidfile))
    cfg, tp, _ = make_job(tmp_path, "sdxl", {"epochs": 3})

    async def scenario():
        task = asyncio.create_task(training.run(cfg, progress=tp, log_file=tmp_path / "t.log", on_update=lambda p: None))
        while tp.step < 2:
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert _dead(int(pidfile.read_text()))


def test_missing_engine_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSION_PIPE_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(JobError) as ei:
        asyncio.run(training.run(tmp_path / "c.toml", progress=TrainProgress(1, 1), log_file=tmp_path / "l",
                                 on_update=lambda p: None))
    assert ei.value.code == "engine_failed" and "DIFFUSION_PIPE_DIR" in ei.value.message


def test_command_line(monkeypatch, tmp_path):
    monkeypatch.delenv("DIFFUSION_PIPE_LAUNCHER", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.delenv("TRAINER_NUM_GPUS", raising=False)
    cmd = training.command(tmp_path / "config.toml", resume=True)
    assert cmd[:2] == ["deepspeed", "--num_gpus=2"] and cmd[2].startswith("--master_port=")
    assert cmd[3:] == ["train.py", "--deepspeed", "--config", str(tmp_path / "config.toml"), "--resume_from_checkpoint"]
