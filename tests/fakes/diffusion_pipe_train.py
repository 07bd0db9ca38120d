"""STAND-IN for diffusion-pipe's `train.py` and the `deepspeed` launcher. FOR TESTS ONLY.

diffusion-pipe needs CUDA (NCCL, `torch.cuda.set_device`), so on a CPU machine the worker
is tested against this script instead. It trains nothing. It reproduces what the worker
depends on, as tdrussell/diffusion-pipe@8f83dbf (train.py, utils/*.py) and
deepspeedai/DeepSpeed@v0.18.4 (deepspeed/launcher/*.py, runtime/pipe/engine.py) do it; every
behaviour below names the line it follows.

Launcher (`deepspeed [--num_gpus=N | --include=localhost:i,j] [--master_port=P] train.py ...`):
- resolves `train.py` against the working directory (it must exist there);
- `CUDA_VISIBLE_DEVICES` is honoured only without --include/--num_gpus; with --num_gpus it is
  ignored with DeepSpeed's message and GPUs 0..N-1 are used (runner.py:448-460, 529-532);
- the data-parallel world is the GPU list; the rank-0 child `python -u train.py --local_rank=0 ...`
  gets WORLD_SIZE and CUDA_VISIBLE_DEVICES=<ids> (launch.py:182); only rank 0 prints, so only it runs;
- log lines: `[...] [INFO] [runner.py:630:main] cmd = ...`, `[launch.py:272:main] process N spawned with
  command: [...]`, `[launch.py:367:main] Process N exits successfully.`; a failing child:
  `[...] [ERROR] [launch.py:341:sigkill_handler] [...] exits with return code = N`, exit N.

train.py:
- argparse: `--config`, `--local_rank`, `--resume_from_checkpoint` (optional value), `--master_port`
  (int, default 29500, sets MASTER_PORT: train.py:54, 252-253);
- set_config_defaults (train.py:93-143): `save_every_n_*` asserted, `[model] dtype` KeyError,
  `[adapter] alpha` NotImplementedError, adapter type other than lora/lokr NotImplementedError;
  `video_clip_mode` other than single_beginning/single_middle NotImplementedError (models/base.py:59);
- dataset validation: more than 3 `resolutions` prints the engine's WARNING and quit()s: exit 0, nothing
  trained (utils/dataset.py:524-531);
- scan: flat, `.txt .npz .json .parquet .bak .db` ignored (650); a directory with no files asserts
  `Directory ... had no images/videos!` (673); media without a `.txt` skipped with
  `Cound not find caption for <file>. Skipping image.` (756); unreadable media skipped (802);
  videos shorter than every video bucket skipped (820);
- buckets as utils/dataset.py builds them (AR buckets x resolutions, frame buckets, size_buckets),
  each cut once to a multiple of the global batch = micro batch x accumulation x world size, a bucket
  below it dropped whole with `size bucket (...) is being completely dropped because it doesn't have
  enough images` (377-396); nothing left: `RuntimeError: Processed dataset was empty` (1304-1309);
- the [optimizer] table minus type/gradient_release goes to the constructor as keyword arguments
  (train.py:666, 815): keys the class does not take are a TypeError, after caching;
- Wan without flash-attn: `assert FLASH_ATTN_2_AVAILABLE` fails (models/wan/attention.py:107) before the
  first step;
- lokr: sdxl raises NotImplementedError when it adds the adapter, after caching (models/sdxl.py:449-458),
  flux at the first save (models/flux.py:231-236);
- log lines: `caching latents: <dir>` (utils/dataset.py:900), `Global batch size = N` (train.py:633),
  DeepSpeed's `steps: S loss: L iter time (s): T samples/sec: X` (runtime/pipe/engine.py:400-404),
  `Started new epoch: E` (saver.py:143, not for epoch 1), `Saving model to directory epochE`
  (saver.py:112), `Resuming training from checkpoint. Resuming at epoch: E, step: S` (train.py:891),
  `TRAINING COMPLETE!` (train.py:974);
- output: `output_dir/<UTC YYYYmmdd_HH-MM-SS>/` with copies of both TOMLs (train.py:547-555),
  `epochE/` written through `epochE/tmp/` (created with exist_ok=False: a leftover tmp crashes,
  saver.py:61-64) holding the model type's LoRA file and a copy of the config, DeepSpeed checkpoints
  `global_stepS/` and a `latest` file.

Behaviour is chosen by environment variables:
  FAKE_DIFFUSION_PIPE_MODE     success (default) | crash (CUDA OOM traceback mid-epoch 2, or
                               mid-epoch 1 when there is one epoch) | hang (stops printing after
                               a few steps and sleeps forever)
  FAKE_DIFFUSION_PIPE_STEP_S   seconds per step (default 0.01)
  FAKE_DIFFUSION_PIPE_PIDFILE  where the training child writes its pid (to check it was killed)
  FAKE_DIFFUSION_PIPE_ARGV     where the training child writes its argv and MASTER_PORT (JSON)
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import tomllib

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm"}
IGNORED_EXTS = {".txt", ".npz", ".json", ".parquet", ".bak", ".db"}  # utils/dataset.py:650
LORA_FILES = {"flux": "pytorch_lora_weights.safetensors", "sdxl": "lora.safetensors"}
VIDEO_CLIP_MODES = {"single_beginning", "single_middle"}
ROUND_TO = 16  # models/base.py:218
FRAMERATE = 16  # models/wan/wan.py:69
# What each optimizer's constructor takes besides lr (torch / bitsandbytes / optimi signatures,
# optimizers/automagic.py:35-48, optimizers/adamw_8bit.py:7). Unknown names go to pytorch_optimizer.
_ADAM = {"betas", "eps", "weight_decay", "amsgrad", "maximize", "foreach", "capturable", "differentiable", "fused"}
OPTIMIZER_KWARGS = {
    "adamw": ("AdamW", _ADAM),
    "adamw_optimi": ("AdamW", {"betas", "eps", "weight_decay", "decouple_lr", "max_lr", "kahan_sum", "foreach"}),
    "adamw8bitkahan": ("AdamW8bitKahan", _ADAM | {"stabilize", "optim_bits", "min_8bit_size", "percentile_clipping",
                                                   "block_wise", "is_paged"}),
    "sgd": ("SGD", {"momentum", "dampening", "weight_decay", "nesterov", "maximize", "foreach", "differentiable",
                    "fused"}),
    "automagic": ("Automagic", {"min_lr", "max_lr", "lr_bump", "eps", "clip_threshold", "beta2", "weight_decay",
                                "do_paramiter_swapping", "paramiter_swapping_factor"}),
}


def _log(level: str, where: str, msg: str) -> None:
    """DeepSpeed's logger format (deepspeed/utils/logging.py:39-40)."""
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
    print(f"[{stamp}] [{level}] [{where}] {msg}", flush=True)


# ---------------------------------------------------------------- launcher (deepspeed)


def launcher(argv: list[str]) -> int:
    num_gpus, include, rest = None, None, []
    it = iter(argv)
    for a in it:
        if rest:  # everything after the script is the script's (runner.py: user_script, user_args=REMAINDER)
            rest.append(a)
        elif a.startswith("--num_gpus"):
            num_gpus = int(a.split("=", 1)[1]) if "=" in a else int(next(it))
        elif a.startswith("--include"):
            include = a.split("=", 1)[1] if "=" in a else next(it)
        elif a.startswith("--master_port"):
            if "=" not in a:
                next(it)
        else:
            rest.append(a)
    if num_gpus is not None and include is not None:
        print("ValueError: Cannot specify num_nodes/gpus with include/exclude", flush=True)
        return 1
    cvd = os.environ.pop("CUDA_VISIBLE_DEVICES", "")
    if cvd:
        if include is not None or num_gpus is not None:
            print(f"Detected VISIBLE_DEVICES={cvd} but ignoring it because one or several of --include/--exclude/"
                  "--num_gpus/--num_nodes cl args were used. If you want to use CUDA_VISIBLE_DEVICES don't pass "
                  "any of these arguments to deepspeed.", flush=True)
        else:
            include = f"localhost:{cvd}"
            print(f"Detected VISIBLE_DEVICES={cvd}: setting --include={include}", flush=True)
    if include is not None:
        ids = [int(x) for x in include.split(":", 1)[1].split(",")]
    else:
        ids = list(range(num_gpus if num_gpus and num_gpus > 0 else 1))
    script, script_args = rest[0], rest[1:]
    if not Path(script).is_file():
        print(f"python: can't open file '{Path(script).resolve()}': [Errno 2] No such file or directory",
              flush=True)
        return 2
    _log("INFO", "real_accelerator.py:260:get_accelerator", "Setting ds_accelerator to cuda (auto detect)")
    _log("INFO", "runner.py:630:main", f"cmd = {sys.executable} -u -m deepspeed.launcher.launch --world_info=... "
                                       f"--master_addr=127.0.0.1 --enable_each_rank_log=None {script} "
                                       f"{' '.join(script_args)}")
    cmd = [sys.executable, "-u", script, "--local_rank=0", *script_args]
    _log("INFO", "launch.py:272:main", f"process {os.getpid()} spawned with command: {cmd}")
    env = dict(os.environ, WORLD_SIZE=str(len(ids)), RANK="0", LOCAL_RANK="0",
               CUDA_VISIBLE_DEVICES=",".join(map(str, ids)))
    child = subprocess.Popen([sys.executable, "-u", __file__, "--train", "--local_rank=0", *script_args], env=env)
    rc = child.wait()
    if rc != 0:
        _log("ERROR", "launch.py:341:sigkill_handler", f"{cmd} exits with return code = {rc}")
        return rc if rc > 0 else 1
    _log("INFO", "launch.py:367:main", f"Process {child.pid} exits successfully.")
    return 0


# ---------------------------------------------------------------- train.py


def _fail(exc_type: str, msg: str, where: str = "set_config_defaults(config)") -> int:
    print("Traceback (most recent call last):\n  File \"/diffusion-pipe/train.py\", line 286, in <module>\n"
          f"    {where}\n{exc_type}: {msg}", flush=True)
    return 1


def _save_lora(run_dir: Path, name: str, config: dict, config_path: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    model_type = config["model"]["type"]
    rank = config.get("adapter", {}).get("rank", 4)
    out = run_dir / name
    tmp = out / "tmp"
    print(f"Saving model to directory {name}", flush=True)
    tmp.mkdir(parents=True, exist_ok=False)  # utils/saver.py:64: a leftover tmp is a FileExistsError
    if config.get("adapter", {}).get("type") == "lokr" and model_type == "flux":
        raise NotImplementedError("Adapter type lokr is not implemented")  # models/flux.py:231-236
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


def _media_size(path: Path) -> tuple[int, int, int] | None:
    """(width, height, frames at 16 fps) as utils/dataset.py:784-800 reads them; None if it cannot open it."""
    try:
        if path.suffix.lower() in VIDEO_EXTS:
            import av

            with av.open(str(path)) as c:
                s = c.streams.video[0]
                seconds = float(s.duration * s.time_base) if s.duration else (c.duration or 0) / 1e6
                return s.codec_context.width, s.codec_context.height, int(seconds * FRAMERATE)
        from PIL import Image

        with Image.open(path) as im:
            return im.size[0], im.size[1], 1
    except Exception:  # noqa: BLE001 - the engine logs and skips what it cannot open
        return None


def _flash_attn() -> bool:
    """models/wan/attention.py:10-14: flash-attn 2 is imported if present."""
    try:
        import flash_attn  # noqa: F401
    except ModuleNotFoundError:
        return False
    return True


def _ars(ds: dict) -> list[float]:
    """utils/dataset.py:495-506."""
    import numpy as np

    if ds.get("size_buckets"):
        ars = [w / h for w, h, _ in ds["size_buckets"]]
    elif not ds.get("enable_ar_bucket", False):
        ars = [1.0]
    elif ds.get("ar_buckets"):
        ars = [a[0] / a[1] if isinstance(a, list) else a for a in ds["ar_buckets"]]
    else:
        ars = list(np.geomspace(ds["min_ar"], ds["max_ar"], num=ds["num_ar_buckets"]))
    return sorted({round(float(a), 3) for a in ars})


def _bucket_of(ds: dict, width: int, height: int, frames: int) -> list[tuple]:
    """The size buckets one file lands in (utils/dataset.py:419-425, 838-871); [] = skipped (too short)."""
    log_ar = math.log(width / height)
    if ds.get("size_buckets"):
        candidates = sorted(sorted(ds["size_buckets"], key=lambda t: t[-1], reverse=True),
                            key=lambda b: abs(log_ar - math.log(b[0] / b[1])))
        for b in candidates:
            if not (frames > 1 and b[-1] == 1) and frames >= b[-1]:
                return [tuple(b)]
        return []
    ars = _ars(ds)
    ar = min(ars, key=lambda a: abs(log_ar - math.log(a)))
    fbs = sorted(set(ds.get("frame_buckets", [1])) | {1})
    fitting = [f for f in fbs if f <= frames]
    if not fitting or (frames > 1 and fitting[-1] == 1):
        return []
    out = []
    for res in sorted({round(float(r), 3) for r in ds["resolutions"]}):
        w = math.sqrt(res * res * ar)
        h = res * res / w
        out.append((ar, int(round(w / ROUND_TO) * ROUND_TO), int(round(h / ROUND_TO) * ROUND_TO), fitting[-1]))
    return out


def train(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    parser.add_argument("--local_rank", type=int, default=-1)
    parser.add_argument("--resume_from_checkpoint", nargs="?", const=True, default=None)
    parser.add_argument("--master_port", type=int, default=29500)
    parser.add_argument("--deepspeed", action="store_true")
    args = parser.parse_args(argv)
    os.environ["MASTER_PORT"] = str(args.master_port)  # train.py:253 overrides the launcher's
    if path := os.environ.get("FAKE_DIFFUSION_PIPE_ARGV"):
        Path(path).write_text(json.dumps({"argv": argv, "MASTER_PORT": os.environ["MASTER_PORT"],
                                          "WORLD_SIZE": os.environ.get("WORLD_SIZE"),
                                          "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
                                          "NCCL_P2P_DISABLE": os.environ.get("NCCL_P2P_DISABLE")}))
    config_path = Path(args.config)
    resume = args.resume_from_checkpoint is not None
    if pidfile := os.environ.get("FAKE_DIFFUSION_PIPE_PIDFILE"):
        Path(pidfile).write_text(str(os.getpid()))
    with open(config_path, "rb") as f:
        config = tomllib.load(f)
    if not any(k in config for k in ("save_every_n_epochs", "save_every_n_steps", "save_every_n_examples")):
        return _fail("AssertionError", "")
    if "dtype" not in config.get("model", {}):
        return _fail("KeyError", "'dtype'")
    adapter = config.get("adapter", {})
    if "alpha" in adapter:
        return _fail("NotImplementedError", "This script forces alpha=rank to make the saved adapter format simpler "
                                            "and more predictable with downstream inference programs. Please "
                                            "remove alpha from the config.")
    if adapter and adapter.get("type") not in ("lora", "lokr"):
        return _fail("NotImplementedError", f"Adapter type {adapter.get('type')} is not implemented")
    clip_mode = config.get("video_clip_mode", "single_beginning")
    if clip_mode not in VIDEO_CLIP_MODES:
        return _fail("NotImplementedError", f"video_clip_mode={clip_mode} is not recognized")
    print(f"using video_clip_mode={clip_mode}", flush=True)
    with open(config["dataset"], "rb") as f:
        ds = tomllib.load(f)
    if len(ds.get("resolutions", [])) > 3:  # utils/dataset.py:524-531: quit() -> exit code 0
        print("WARNING: You have set a lot of resolutions in the dataset config. Please read the comments in the "
              "example dataset.toml file, and make sure you understand what this setting does. If you still want "
              "to proceed with the current configuration, run the script with the --i_know_what_i_am_doing flag.",
              flush=True)
        return 0

    world = int(os.environ.get("WORLD_SIZE", "1")) // config.get("pipeline_stages", 1)
    mbs = config.get("micro_batch_size_per_gpu", 1)
    image_mbs = config.get("image_micro_batch_size_per_gpu", mbs)
    gas = config.get("gradient_accumulation_steps", 1)
    copies = max(ds.get("cache_shuffle_num", 0), 1)
    buckets: dict[tuple, int] = {}
    for d in ds.get("directory", []):
        path = Path(d["path"])
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix not in IGNORED_EXTS)
        if not files:
            print(f"Traceback (most recent call last):\nAssertionError: Directory {path} had no images/videos!",
                  flush=True)
            return 1
        for m in files:
            if not m.with_suffix(".txt").is_file():
                _log("WARNING", "dataset.py:756:fn", f"Cound not find caption for {m}. Skipping image.")
                continue
            size = _media_size(m)
            if size is None:
                _log("WARNING", "dataset.py:802:fn", f"Media file {m} could not be opened. Skipping.")
                continue
            keys = _bucket_of(ds, *size)
            if not keys:
                print(f"video with frames={size[2]} is being skipped because it is too short", flush=True)
            for key in keys:
                buckets[key] = buckets.get(key, 0) + copies * d.get("num_repeats", 1)
        print(f"caching latents: {path}", flush=True)
    if adapter.get("type") == "lokr" and config["model"]["type"] == "sdxl":  # train.py:532
        return _fail("NotImplementedError", "Adapter type lokr is not implemented",
                     "model.configure_adapter(adapter_config)")
    print(f"Global batch size = {mbs * gas * world}", flush=True)

    optim = dict(config.get("optimizer", {}))
    name = str(optim.pop("type", "adamw_optimi"))
    class_name, takes = OPTIMIZER_KWARGS.get(name.lower(), (name, None))
    for key in optim:
        if takes is not None and key not in takes | {"lr", "gradient_release", "beta2_half_life"}:
            return _fail("TypeError", f"{class_name}.__init__() got an unexpected keyword argument '{key}'",
                         "model_engine._configure_optimizer(get_optimizer, parameters_to_train)")

    steps_per_epoch = 0
    for key, entries in sorted(buckets.items()):
        gbs = (image_mbs if key[-1] == 1 else mbs) * gas * world
        if entries < gbs:
            _log("WARNING", "dataset.py:396:_make_divisible_by",
                 f"size bucket {key} is being completely dropped because it doesn't have enough images")
        steps_per_epoch += entries // gbs
    if steps_per_epoch == 0:
        print("Traceback (most recent call last):\nRuntimeError: Processed dataset was empty. Probably caused by "
              "rounding down for each size bucket.", flush=True)
        return 1

    if config["model"]["type"] == "wan" and not _flash_attn():
        # models/wan/attention.py:107, reached from clip.py:79 while caching i2v latents, from model.py:146 at the
        # first training step otherwise
        print("Traceback (most recent call last):\n  File \"/diffusion-pipe/models/wan/attention.py\", line 107, "
              "in flash_attention\n    assert FLASH_ATTN_2_AVAILABLE\nAssertionError", flush=True)
        return 1

    output_dir = Path(config["output_dir"])
    epochs = config["epochs"]
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
            print("Traceback (most recent call last):\n  File \"/diffusion-pipe/train.py\", line 918, in <module>\n"
                  "    loss = model_engine.train_batch(iterator).item()\n"
                  "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                  "capacity of 79.19 GiB of which 1.02 GiB is free.", flush=True)
            return 1
        dt = time.perf_counter() - t0
        print(f"steps: {step} loss: {loss:.4f} iter time (s): {dt:.3f} samples/sec: {mbs * gas * world / dt:.3f}",
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
