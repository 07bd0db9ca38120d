"""The training runner against the labeled diffusion-pipe stand-in: log parsing, crash, hang, cancel."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

import pytest
import tomllib

from common.jobs import JobError
from common.processes import free_port
from handlers.diffusion_pipe_trainer import buckets, configs, gpus, training
from handlers.diffusion_pipe_trainer.models import REGISTRY
from handlers.diffusion_pipe_trainer.outputs import clear_interrupted_saves, latest_lora
from handlers.diffusion_pipe_trainer.schema import parse_request
from handlers.diffusion_pipe_trainer.train_log import TrainProgress
from tests.process_helpers import gone_within
from tests.trainer_fixtures import png

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


def make_job(tmp_path: Path, model_type: str, training: dict, n_images: int = 6, captions: int | None = None,
             sizes: list[tuple[int, int]] | None = None, world_size: int = 1):
    images = tmp_path / "dataset" / "images"
    images.mkdir(parents=True)
    for i in range(n_images):
        (images / f"img{i}.png").write_bytes(png(i, sizes[i] if sizes else (40, 30)))
        if captions is None or i < captions:
            (images / f"img{i}.txt").write_text(f"ohwx, picture {i}")
    req = parse_request({"model_type": model_type, "dataset": {"type": "precaptioned", "images_url": "https://e/x.zip"},
                         "training": training, "api_keys": {"huggingface_token": "hf_testtoken123"}})
    spec = REGISTRY[model_type]
    cfg = configs.build_config(spec, req.training, models_dir=tmp_path / "models", output_dir=tmp_path / "out",
                               dataset_toml=tmp_path / "config" / "dataset.toml")
    ds = configs.build_dataset(spec, req.training, configs.DatasetDirs(images, None, 1, 1))
    configs.write_configs(tmp_path / "config", cfg, ds)
    captioned = sorted(p for p in images.glob("*.png") if p.with_suffix(".txt").is_file())
    plan = buckets.plan(ds, [buckets.Directory(buckets.media_of(captioned, "images"), 1, images)],
                        micro_batch=req.training.batch_size, grad_accum=req.training.gradient_accumulation_steps,
                        world_size=world_size)
    tp = TrainProgress(req.training.epochs, plan.steps_per_epoch, max_steps=req.training.max_steps)
    return tmp_path / "config" / "config.toml", tp, spec, plan


def run(cfg: Path, tp: TrainProgress, tmp_path: Path, gpu_ids: list[int] | None = None, resume: bool = False, **kw):
    updates = []
    ids = gpu_ids or [0]
    cmd = training.command(cfg, resume=resume, gpu_ids=ids, master_port=free_port())
    result = asyncio.run(training.run(cmd, gpu_ids=ids, progress=tp, log_file=tmp_path / "train.log",
                                      on_update=lambda p: updates.append(p.report() | {"pct": p.percent()}), **kw))
    return result, updates


@pytest.mark.parametrize("model_type", ["sdxl", "flux", "qwen"])
def test_success_parses_progress_and_finds_the_lora(engine, tmp_path, model_type):
    cfg, tp, spec, _ = make_job(tmp_path, model_type, {"epochs": 3, "save_every_n_epochs": 2,
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
    cfg, tp, _, _ = make_job(tmp_path, "sdxl", {"epochs": 2, "gradient_accumulation_steps": 1})
    tp.steps_per_epoch = 100  # a wrong estimate: the log's "Started new epoch: 2" corrects it
    tp, _ = run(cfg, tp, tmp_path)
    assert tp.steps_per_epoch == 6 and tp.total_steps == 12 and tp.percent() == 100.0


def test_media_without_captions_are_what_the_engine_skips(engine, tmp_path):
    cfg, tp, _, _ = make_job(tmp_path, "sdxl", {"epochs": 1, "gradient_accumulation_steps": 1}, n_images=4, captions=3)
    run(cfg, tp, tmp_path)
    assert "Cound not find caption for" in (tmp_path / "train.log").read_text()


def test_crash_mid_epoch_is_engine_failed_with_the_log_tail(engine, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_DIFFUSION_PIPE_MODE", "crash")
    cfg, tp, _, _ = make_job(tmp_path, "sdxl", {"epochs": 3, "gradient_accumulation_steps": 1})
    with pytest.raises(JobError) as ei:
        run(cfg, tp, tmp_path)
    err = ei.value
    assert err.code == "engine_failed" and "exited with code 1" in err.message
    assert "GPU ran out of memory" in err.message
    assert any("CUDA out of memory" in line for line in err.details)
    assert any("exits with return code = 1" in line for line in err.details)
    assert tp.epoch == 2


def test_hang_past_timeout_kills_the_whole_process_group(engine, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_DIFFUSION_PIPE_MODE", "hang")
    monkeypatch.setenv("FAKE_DIFFUSION_PIPE_PIDFILE", str(tmp_path / "train.pid"))
    cfg, tp, _, _ = make_job(tmp_path, "sdxl", {"epochs": 3, "gradient_accumulation_steps": 1})
    with pytest.raises(JobError) as ei:
        run(cfg, tp, tmp_path, timeout_s=3)
    assert ei.value.code == "timeout" and "time limit of 3 s" in ei.value.message
    assert "resume" in ei.value.message
    assert gone_within(int((tmp_path / "train.pid").read_text()), 5)  # the launcher's child, not just the launcher


def test_cancellation_kills_the_process_group(engine, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_DIFFUSION_PIPE_MODE", "hang")
    pidfile = tmp_path / "train.pid"
    monkeypatch.setenv("FAKE_DIFFUSION_PIPE_PIDFILE", str(pidfile))
    cfg, tp, _, _ = make_job(tmp_path, "sdxl", {"epochs": 3})

    async def scenario():
        cmd = training.command(cfg, resume=False, gpu_ids=[0], master_port=free_port())
        task = asyncio.create_task(training.run(cmd, gpu_ids=[0], progress=tp, log_file=tmp_path / "t.log",
                                                on_update=lambda p: None))
        while tp.step < 2:
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert gone_within(int(pidfile.read_text()), 5)


def test_missing_engine_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSION_PIPE_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(JobError) as ei:
        asyncio.run(training.run(["deepspeed"], gpu_ids=[0], progress=TrainProgress(1, 1), log_file=tmp_path / "l",
                                 on_update=lambda p: None))
    assert ei.value.code == "engine_failed" and "DIFFUSION_PIPE_DIR" in ei.value.message


def test_command_line(monkeypatch, tmp_path):
    monkeypatch.delenv("DIFFUSION_PIPE_LAUNCHER", raising=False)
    cmd = training.command(tmp_path / "config.toml", resume=True, gpu_ids=[2, 3], master_port=29617)
    assert cmd == ["deepspeed", "--include=localhost:2,3", "--master_port=29617", "train.py", "--deepspeed",
                   "--config", str(tmp_path / "config.toml"), "--master_port=29617", "--resume_from_checkpoint"]


# --- engine conformance: what the worker passes, and what the engine does with it ---------------------------------

def test_master_port_reaches_train_py_which_would_otherwise_use_29500(engine, tmp_path, monkeypatch):
    """train.py has its own --master_port (default 29500) and sets MASTER_PORT from it (train.py:54, 252-253)."""
    monkeypatch.setenv("FAKE_DIFFUSION_PIPE_ARGV", str(tmp_path / "argv.json"))
    cfg, tp, _, _ = make_job(tmp_path, "sdxl", {"epochs": 1, "gradient_accumulation_steps": 1})
    port = free_port()
    cmd = training.command(cfg, resume=False, gpu_ids=[0], master_port=port)
    asyncio.run(training.run(cmd, gpu_ids=[0], progress=tp, log_file=tmp_path / "l", on_update=lambda p: None))
    seen = json.loads((tmp_path / "argv.json").read_text())
    assert seen["MASTER_PORT"] == str(port)
    assert seen["argv"][seen["argv"].index("--config") + 2] == f"--master_port={port}"


def test_visible_gpus_are_what_deepspeed_trains_on(engine, tmp_path, monkeypatch):
    """--num_gpus makes DeepSpeed ignore CUDA_VISIBLE_DEVICES (runner.py:448-460); --include keeps it."""
    monkeypatch.delenv("TRAINER_NUM_GPUS")
    monkeypatch.setenv("PATH", str(fake_nvidia_smi(tmp_path, gpus=4, p2p="OK")) + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    monkeypatch.setenv("FAKE_DIFFUSION_PIPE_ARGV", str(tmp_path / "argv.json"))
    ids = gpus.visible_gpu_ids()
    assert ids == [1, 3]
    # 6 images x 1 repeat, micro batch 1 x accumulation 1 x 2 GPUs: 3 steps per epoch
    cfg, tp, _, plan = make_job(tmp_path, "sdxl", {"epochs": 1, "gradient_accumulation_steps": 1}, world_size=2)
    assert plan.steps_per_epoch == 3
    tp, _ = run(cfg, tp, tmp_path, gpu_ids=ids)
    seen = json.loads((tmp_path / "argv.json").read_text())
    assert seen["CUDA_VISIBLE_DEVICES"] == "1,3" and seen["WORLD_SIZE"] == "2"
    assert "Global batch size = 2" in (tmp_path / "train.log").read_text()
    assert tp.step == 3 and tp.completed


def fake_nvidia_smi(tmp_path: Path, *, gpus: int, p2p: str) -> Path:
    """A stand-in `nvidia-smi` answering `-L` and `topo -p2p r` (the output format of NVIDIA's tool)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    listing = "\n".join(f"GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i:04d}aaaa-bbbb)" for i in range(gpus))
    header = "\t" + "\t".join(f"GPU{i}" for i in range(gpus))
    rows = "\n".join(f" GPU{i}\t" + "\t".join("X" if i == j else p2p for j in range(gpus)) for i in range(gpus))
    script = bin_dir / "nvidia-smi"
    script.write_text(f'#!/bin/sh\nif [ "$1" = "-L" ]; then cat <<"EOF"\n{listing}\nEOF\nelse cat <<"EOF"\n'
                      f'{header}\n{rows}\n\nLegend:\n  X    = Self\n  OK   = Status Ok\n  NS   = Not supported\n'
                      'EOF\nfi\n')
    script.chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("p2p, disabled", [("OK", None), ("NS", "1"), ("CNS", "1")])
def test_nccl_p2p_is_disabled_only_without_p2p(tmp_path, monkeypatch, p2p, disabled):
    monkeypatch.setenv("PATH", str(fake_nvidia_smi(tmp_path, gpus=2, p2p=p2p)) + os.pathsep + os.environ["PATH"])
    monkeypatch.delenv("NCCL_P2P_DISABLE", raising=False)
    assert training.child_env([0, 1]).get("NCCL_P2P_DISABLE") == disabled
    assert training.child_env([0]).get("NCCL_P2P_DISABLE") is None  # one GPU: nothing to disable


def test_gpu_uuids_are_mapped_to_indices(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(fake_nvidia_smi(tmp_path, gpus=4, p2p="OK")) + os.pathsep + os.environ["PATH"])
    monkeypatch.delenv("TRAINER_NUM_GPUS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-0002aaaa-bbbb")
    assert gpus.visible_gpu_ids() == [2]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpus.visible_gpu_ids() == [0, 1, 2, 3]
    monkeypatch.setenv("TRAINER_NUM_GPUS", "2")
    assert gpus.visible_gpu_ids() == [0, 1]


def test_buckets_smaller_than_the_global_batch_are_never_trained(engine, tmp_path):
    """5 landscape images and 1 portrait one, global batch 4: the engine keeps 4 of the 5 landscape samples and
    drops the portrait bucket whole (utils/dataset.py:377-396), the same ones every epoch."""
    sizes = [(40, 30)] * 5 + [(30, 60)]
    cfg, tp, _, plan = make_job(tmp_path, "sdxl", {"epochs": 2, "gradient_accumulation_steps": 4}, sizes=sizes)
    assert plan.steps_per_epoch == 1
    kept, dropped = sorted(plan.warnings(), key=lambda w: "drops it whole" in w)
    assert kept.startswith("1 file(s) never trained") and "keeps 4" in kept
    assert re.search(r"left out: img[0-4]\.png$", kept)  # which one: the engine's seeded order
    assert dropped.startswith("1 file(s) never trained") and dropped.endswith("drops it whole: img5.png")
    tp, _ = run(cfg, tp, tmp_path)
    assert tp.completed and tp.step == 2  # 1 step per epoch, as computed
    assert len(tp.dropped_buckets) == 1 and "1" in tp.dropped_buckets[0]  # the engine's log line, caught


def test_more_than_three_resolutions_exit_0_with_nothing_trained(engine, tmp_path):
    """Why the schema refuses a 4th resolution: the engine quit()s with exit code 0 (utils/dataset.py:524-531)."""
    cfg, tp, spec, _ = make_job(tmp_path, "sdxl", {"epochs": 1})
    ds_path = tmp_path / "config" / "dataset.toml"
    ds_path.write_text(ds_path.read_text().replace("resolutions = [1024]", "resolutions = [512, 640, 768, 1024]"))
    tp, _ = run(cfg, tp, tmp_path)  # no error ...
    assert not tp.completed and latest_lora(tmp_path / "out", spec.lora_file) is None  # ... and no LoRA
    assert "a lot of resolutions" in (tmp_path / "train.log").read_text()


def test_optimizer_keys_it_does_not_take_fail_after_caching(engine, tmp_path):
    """Why configs.py writes no betas/eps for sgd: train.py passes the table to the constructor (train.py:666)."""
    cfg, tp, _, _ = make_job(tmp_path, "sdxl", {"epochs": 1, "optimizer_type": "sgd"})
    assert "betas" not in tomllib.loads(cfg.read_text())["optimizer"]
    run(cfg, tp, tmp_path)  # what the worker writes trains
    text = cfg.read_text().replace("[optimizer]", "[optimizer]\nbetas = [0.9, 0.99]")
    cfg.write_text(text)
    with pytest.raises(JobError) as ei:
        run(cfg, TrainProgress(1, 1), tmp_path)
    assert any("SGD.__init__() got an unexpected keyword argument 'betas'" in line for line in ei.value.details)
    assert "caching latents" in (tmp_path / "train.log").read_text()


def test_a_save_interrupted_by_a_kill_is_cleared_before_resuming(engine, tmp_path):
    """A kill during a save leaves epochN/tmp; the engine's next save of epochN crashes on it (saver.py:61-64)."""
    cfg, tp, spec, _ = make_job(tmp_path, "sdxl", {"epochs": 1, "gradient_accumulation_steps": 1,
                                                   "checkpoint_every_n_epochs": 1})
    run(cfg, tp, tmp_path)
    run_dir = next((tmp_path / "out").iterdir())
    (run_dir / "epoch2" / "tmp").mkdir(parents=True)  # killed while saving epoch 2
    (run_dir / "epoch2" / "lora.safetensors").write_bytes(b"half")
    cfg.write_text(cfg.read_text().replace("epochs = 1", "epochs = 2"))
    with pytest.raises(JobError) as ei:
        run(cfg, TrainProgress(2, 6), tmp_path, resume=True)
    assert any("FileExistsError" in line for line in ei.value.details)
    assert clear_interrupted_saves(tmp_path / "out") == [f"{run_dir.name}/epoch2"]
    tp, _ = run(cfg, TrainProgress(2, 6), tmp_path, resume=True)
    assert tp.completed and latest_lora(tmp_path / "out", spec.lora_file).name == "epoch2"


def test_wan_fails_in_the_engine_without_flash_attn(engine, tmp_path, monkeypatch):
    """What the worker's preflight spares a Wan job: the engine's assert, after caching (models/wan/attention.py)."""
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parents[1]))  # no flash_attn stand-in on the path
    cfg, tp, _, _ = make_job(tmp_path, "wan13", {"epochs": 1, "gradient_accumulation_steps": 1})
    with pytest.raises(JobError) as ei:
        run(cfg, tp, tmp_path)
    assert "flash-attn is not installed" in ei.value.message
    assert any("assert FLASH_ATTN_2_AVAILABLE" in line for line in ei.value.details)
