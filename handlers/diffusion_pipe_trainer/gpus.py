"""The worker's GPUs and host RAM as the engine will use them: which GPUs, P2P or not, enough RAM or not.

Data-parallel over every visible GPU is the default. DeepSpeed's launcher ignores (and removes)
`CUDA_VISIBLE_DEVICES` as soon as `--num_gpus` is passed and then uses GPUs 0..N-1
(deepspeedai/DeepSpeed v0.18.4 deepspeed/launcher/runner.py:448-460, 529-532), so the worker
passes `--include localhost:<ids>` with the visible ids instead; the launcher then sets
`CUDA_VISIBLE_DEVICES` for each rank itself (deepspeed/launcher/launch.py:182).

Each data-parallel rank is its own process that loads the whole model into host RAM before
moving it to its GPU (diffusion-pipe train.py:310-382 builds the model in every rank), so a
14B model on 4 GPUs needs about 4x the RAM of one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from common.jobs import JobError
from handlers.diffusion_pipe_trainer import settings

_GPU_LINE = re.compile(r"^GPU (\d+): .*\(UUID: (\S+)\)")


def _nvidia_smi(*args: str) -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        return subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def visible_gpu_ids() -> list[int]:
    """GPU indices the engine trains on: `CUDA_VISIBLE_DEVICES` when set (indices or UUIDs), else every GPU
    `nvidia-smi -L` lists, else [0]. `TRAINER_NUM_GPUS` keeps only the first N of them."""
    listed = _nvidia_smi("-L") or ""
    uuids = {m.group(2): int(m.group(1)) for line in listed.splitlines() if (m := _GPU_LINE.match(line))}
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None and cvd.strip() not in ("", "all"):
        ids = []
        for item in (x.strip() for x in cvd.split(",") if x.strip()):
            if item.isdigit():
                ids.append(int(item))
            elif item in uuids:
                ids.append(uuids[item])
            else:
                raise JobError("engine_failed", f"CUDA_VISIBLE_DEVICES names '{item}', which is neither a GPU index "
                                                "nor a UUID that nvidia-smi -L lists; DeepSpeed needs GPU indices")
    else:
        ids = sorted(uuids.values()) or [0]
    if limit := settings.current().num_gpus:
        ids = ids[:limit]
    return ids


def p2p_ok(ids: list[int]) -> bool:
    """Whether every pair of `ids` can talk peer to peer (`nvidia-smi topo -p2p r` says OK). NVLink pods can;
    many PCIe cloud GPUs cannot, and NCCL then hangs unless P2P is disabled. Unknown counts as no."""
    if len(ids) < 2:
        return True
    out = _nvidia_smi("topo", "-p2p", "r")
    if not out:
        return False
    rows = {}
    for line in out.splitlines():
        cells = line.split()
        if cells and re.fullmatch(r"GPU\d+", cells[0]):
            rows[int(cells[0][3:])] = cells[1:]
    try:
        return all(rows[i][j] == "OK" for i in ids for j in ids if i != j)
    except (KeyError, IndexError):
        return False


def host_ram_gb() -> float | None:
    """RAM of this worker in GB: `TRAINER_HOST_RAM_GB`, else the smaller of MemTotal and the cgroup limit."""
    if configured := settings.current().host_ram_gb:
        return configured
    limits = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    limits.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                value = f.read().strip()
            if value.isdigit() and int(value) < 1 << 60:
                limits.append(int(value))
        except OSError:
            continue
    return min(limits) / 1e9 if limits else None


def check_ram(model_name: str, per_process_gb: float, processes: int) -> None:
    """Refuse a job whose model, loaded once per training process, would not fit the worker's RAM
    (the kernel would kill a rank mid-load: DeepSpeed's `return code = -9`)."""
    have = host_ram_gb()
    need = per_process_gb * processes
    if have is not None and need > have:
        raise JobError("invalid_input", f"model_type: {model_name} needs about {per_process_gb:g} GB of host RAM per "
                                        f"GPU process, {need:g} GB for {processes} GPU(s), and this worker has "
                                        f"{have:.0f} GB; use a worker with more RAM or fewer GPUs (TRAINER_NUM_GPUS)")


def flash_attn_error(python: str) -> str | None:
    """None when `import flash_attn` works in the engine's Python, else why not (the last line of its error).

    Wan's attention asserts flash-attn 2 (or 3) on the path its model calls
    (diffusion-pipe models/wan/attention.py:10-14, 89-107; models/wan/model.py:146, clip.py:79): without it,
    i2v fails while caching latents and t2v at the first step, after the model download."""
    try:
        proc = subprocess.run([python, "-c", "import flash_attn"], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    if proc.returncode == 0:
        return None
    lines = [x for x in proc.stderr.strip().splitlines() if x.strip()]
    return lines[-1] if lines else f"exit code {proc.returncode}"
