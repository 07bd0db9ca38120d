"""STAND-IN for diffusion-pipe's `train.py` and the `deepspeed` launcher. FOR TESTS ONLY.

diffusion-pipe needs CUDA (NCCL, `torch.cuda.set_device`), so on a CPU machine the worker
is tested against this script instead. It trains nothing. It reproduces what the worker
depends on, as diffusion-pipe at the pinned commit does it:

- launcher: `deepspeed [--num_gpus=N] [--master_port=P] train.py --deepspeed --config X
  [--resume_from_checkpoint]` resolves `train.py` against the working directory (it must
  exist there), runs it as a child `python -u train.py --local_rank=0 ...` and, when the
  child fails, logs `sigkill_handler(...) exits with return code = N` and exits with N;
- config checks that make the engine raise: `[model] dtype` missing (KeyError), `alpha` in
  `[adapter]` (NotImplementedError), no `save_every_n_*` (assert), a bad `video_clip_mode`;
- dataset scan: flat, non-recursive; media without a `.txt` skipped with the engine's
  `Cound not find caption for ...`; an empty directory is an error;
- log lines: `Global batch size = N`, DeepSpeed's `steps: S loss: L iter time (s): T
  samples/sec: X`, `Started new epoch: E` (not for epoch 1), `Saving model to directory
  epochE`, `Resuming training from checkpoint. Resuming at epoch: E, step: S`,
  `TRAINING COMPLETE!`;
- output layout: `output_dir/<UTC YYYYmmdd_HH-MM-SS>/` with copies of both TOMLs,
  `epochE/` holding the model type's LoRA file (flux `pytorch_lora_weights.safetensors`,
  sdxl `lora.safetensors`, others `adapter_model.safetensors` + `adapter_config.json`) and
  a copy of the config, DeepSpeed checkpoints `global_stepS/` and a `latest` file.

Behaviour is chosen by environment variables:
  FAKE_DIFFUSION_PIPE_MODE     success (default) | crash (CUDA OOM traceback mid-epoch 2, or
                               mid-epoch 1 when there is one epoch) | hang (stops printing after
                               a few steps and sleeps forever)
  FAKE_DIFFUSION_PIPE_STEP_S   seconds per step (default 0.01)
  FAKE_DIFFUSION_PIPE_PIDFILE  where the training child writes its pid (to check it was killed)
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import tomllib

MEDIA_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif"}
LORA_FILES = {"flux": "pytorch_lora_weights.safetensors", "sdxl": "lora.safetensors"}
VIDEO_CLIP_MODES = {"single_beginning", "single_middle"}


def _log(msg: str) -> None:
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
    print(f"[{stamp}] [INFO] {msg}", flush=True)


# ---------------------------------------------------------------- launcher (deepspeed)


def launcher(argv: list[str]) -> int:
    num_gpus, rest = 1, []
    it = iter(argv)
    for a in it:
        if a.startswith("--num_gpus"):
            num_gpus = int(a.split("=", 1)[1]) if "=" in a else int(next(it))
        elif a.startswith("--master_port"):
            if "=" not in a:
                next(it)
        else:
            rest.append(a)
    script, script_args = rest[0], rest[1:]
    if not Path(script).is_file():
        print(f"python: can't open file '{Path(script).resolve()}': [Errno 2] No such file or directory",
              flush=True)
        return 2
    _log("[real_accelerator.py:260:get_accelerator] Setting ds_accelerator to cuda (auto detect)")
    _log(f"[runner.py:607:main] cmd = {sys.executable} -u -m deepspeed.launcher.launch --world_info=... "
         f"--master_addr=127.0.0.1 --enable_each_rank_log=None {script} {' '.join(script_args)}")
    _log(f"[launch.py:256:main] process {os.getpid()} spawned with command: "
         f"['{sys.executable}', '-u', '{script}', '--local_rank=0', {', '.join(repr(a) for a in script_args)}]")
    if num_gpus < 1:
        print("RuntimeError: No CUDA GPUs are available", flush=True)
        return 1
    child = subprocess.Popen([sys.executable, "-u", __file__, "--train", "--local_rank=0", *script_args])
    rc = child.wait()
    if rc != 0:
        print(f"[ERROR] [launch.py:325:sigkill_handler] ['{sys.executable}', '-u', '{script}', '--local_rank=0'] "
              f"exits with return code = {rc}", flush=True)
        return rc if rc > 0 else 1
    return 0


# ---------------------------------------------------------------- train.py


def _fail(exc_type: str, msg: str) -> int:
    print("Traceback (most recent call last):\n  File \"/diffusion-pipe/train.py\", line 287, in <module>\n"
          f"    set_config_defaults(config)\n{exc_type}: {msg}", flush=True)
    return 1


def _save_lora(run_dir: Path, name: str, config: dict, config_path: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    model_type = config["model"]["type"]
    rank = config.get("adapter", {}).get("rank", 4)
    out = run_dir / name
    tmp = out / "tmp"
    tmp.mkdir(parents=True)
    print(f"Saving model to directory {name}", flush=True)
    tensors = {
        "diffusion_model.blocks.0.self_attn.q.lora_A.weight": np.zeros((rank, 8), dtype=np.float32),
        "diffusion_model.blocks.0.self_attn.q.lora_B.weight": np.zeros((8, rank), dtype=np.float32),
    }
    save_file(tensors, str(out / LORA_FILES.get(model_type, "adapter_model.safetensors")), metadata={"format": "pt"})
    if model_type not in LORA_FILES:
        (out / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": rank, "peft_type": "LORA"}))
    shutil.copy(config_path, out)
    tmp.rmdir()


def _save_checkpoint(run_dir: Path, step: int, epoch: int) -> None:
    ck = run_dir / f"global_step{step}"
    ck.mkdir(parents=True, exist_ok=True)
    (ck / "layer_00-model_states.pt").write_bytes(b"\0" * 64)
    (ck / "mp_rank_00_model_states.pt").write_text(json.dumps({"step": step, "epoch": epoch}))
    (run_dir / "latest").write_text(f"global_step{step}")


def train(argv: list[str]) -> int:
    config_path = Path(argv[argv.index("--config") + 1])
    resume = "--resume_from_checkpoint" in argv
    if pidfile := os.environ.get("FAKE_DIFFUSION_PIPE_PIDFILE"):
        Path(pidfile).write_text(str(os.getpid()))
    with open(config_path, "rb") as f:
        config = tomllib.load(f)
    if "dtype" not in config.get("model", {}):
        return _fail("KeyError", "'dtype'")
    if "alpha" in config.get("adapter", {}):
        return _fail("NotImplementedError", "This script forces alpha=rank to make the saved adapter format simpler "
                                            "and more predictable with downstream inference programs. Please "
                                            "remove alpha from the config.")
    if not any(k in config for k in ("save_every_n_epochs", "save_every_n_steps", "save_every_n_examples")):
        return _fail("AssertionError", "")
    with open(config["dataset"], "rb") as f:
        ds = tomllib.load(f)
    mbs = config.get("micro_batch_size_per_gpu", 1)
    gas = config.get("gradient_accumulation_steps", 1)
    epochs = config["epochs"]
    clip_mode = config.get("video_clip_mode", "single_beginning")
    if clip_mode not in VIDEO_CLIP_MODES:
        return _fail("NotImplementedError", f"video_clip_mode={clip_mode} is not recognized")
    print(f"using video_clip_mode={clip_mode}", flush=True)

    n_res = len(ds.get("resolutions", [512]))
    steps_per_epoch = 0
    for d in ds.get("directory", []):
        path = Path(d["path"])
        media = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in MEDIA_EXTS)
        kept = []
        for m in media:
            if m.with_suffix(".txt").is_file():
                kept.append(m)
            else:
                print(f"Cound not find caption for {m}", flush=True)
        if not kept:
            print(f"Traceback (most recent call last):\nRuntimeError: Directory {path} had no images/videos!",
                  flush=True)
            return 1
        print(f"caching latents: {path}", flush=True)
        steps_per_epoch += len(kept) * d.get("num_repeats", 1) * n_res // (mbs * gas)
    steps_per_epoch = max(1, steps_per_epoch)
    print(f"Global batch size = {mbs * gas}", flush=True)

    output_dir = Path(config["output_dir"])
    step, epoch = 1, 1
    if resume:
        runs = sorted(p for p in output_dir.iterdir() if p.is_dir())
        run_dir = runs[-1]
        latest = int((run_dir / "latest").read_text().removeprefix("global_step"))
        step = latest + 1
        epoch = (step - 1) // steps_per_epoch + 1
        print(f"Resuming training from checkpoint. Resuming at epoch: {epoch}, step: {step}", flush=True)
    else:
        run_dir = output_dir / _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d_%H-%M-%S")
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(config_path, run_dir)
        shutil.copy(config["dataset"], run_dir)

    mode = os.environ.get("FAKE_DIFFUSION_PIPE_MODE", "success")
    delay = float(os.environ.get("FAKE_DIFFUSION_PIPE_STEP_S", "0.01"))
    save_every = config.get("save_every_n_epochs")
    max_steps = config.get("max_steps")
    crash_epoch = 2 if epochs > 1 else 1
    steps_done_here = 0
    while True:
        t0 = time.perf_counter()
        time.sleep(delay)
        loss = 0.1 + 0.05 / step
        if mode == "hang" and steps_done_here >= 2:
            signal.pause() if hasattr(signal, "pause") else time.sleep(1e9)
        if mode == "crash" and epoch == crash_epoch and (step - 1) % steps_per_epoch >= steps_per_epoch // 2:
            print("Traceback (most recent call last):\n  File \"/diffusion-pipe/train.py\", line 921, in <module>\n"
                  "    loss = model_engine.train_batch(iterator).item()\n"
                  "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                  "capacity of 79.19 GiB of which 1.02 GiB is free.", flush=True)
            return 1
        dt = time.perf_counter() - t0
        print(f"steps: {step} loss: {loss:.4f} iter time (s): {dt:.3f} samples/sec: {mbs * gas / dt:.3f}",
              flush=True)
        steps_done_here += 1
        if max_steps and step >= max_steps:
            _save_checkpoint(run_dir, step, epoch)
            _save_lora(run_dir, f"step{step}", config, config_path)
            break
        if step % steps_per_epoch == 0:  # epoch finished
            if save_every and epoch % save_every == 0 or epoch == epochs:
                _save_lora(run_dir, f"epoch{epoch}", config, config_path)
            ck_every = config.get("checkpoint_every_n_epochs")
            if epoch == epochs or ck_every and epoch % ck_every == 0:
                _save_checkpoint(run_dir, step, epoch)
            if epoch == epochs:
                break
            epoch += 1
            print(f"Started new epoch: {epoch}", flush=True)
        step += 1
    print("TRAINING COMPLETE!", flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--train":
        sys.exit(train(sys.argv[2:]))
    sys.exit(launcher(sys.argv[1:]))
