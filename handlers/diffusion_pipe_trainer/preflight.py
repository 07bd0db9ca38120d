"""What this worker can train: its GPUs for a job, and whether the engine would even start."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from common.jobs import JobError
from handlers.diffusion_pipe_trainer import gpus, training
from handlers.diffusion_pipe_trainer.models import ModelSpec
from handlers.diffusion_pipe_trainer.schema import TrainRequest


@dataclass(frozen=True)
class Gpus:
    ids: list[int]
    data_parallel: int  # GPUs / pipeline_stages: the ranks that each take a share of every global batch


def gpus_for(req: TrainRequest) -> Gpus:
    ids = gpus.visible_gpu_ids()
    stages = req.training.passthrough().get("pipeline_stages", 1)
    if len(ids) % stages:
        # DeepSpeed asserts world_size % num_stages == 0 (deepspeed/runtime/pipe/module.py:175 at v0.18.4)
        raise JobError("invalid_input", f"training.pipeline_stages: {stages} does not divide the {len(ids)} GPU(s) "
                                        "of this worker")
    return Gpus(ids, len(ids) // stages)


def engine_problems(spec: ModelSpec) -> list[str]:
    """What would make this job fail in the engine after the model download: no engine, or no flash-attn for Wan
    (the engine runs on this same Python: the launcher starts `sys.executable -u train.py`)."""
    problems = []
    if not (training.engine_dir() / "train.py").is_file():
        problems.append(f"diffusion-pipe not found: {training.engine_dir()}/train.py is missing (DIFFUSION_PIPE_DIR)")
    elif spec.needs_flash_attn and (why := gpus.flash_attn_error(sys.executable)):
        problems.append(f"flash-attn is not importable in the engine's Python ({why}), and diffusion-pipe's Wan "
                        "asserts it (models/wan/attention.py:107): the image needs flash-attn 2")
    return problems


def check(spec: ModelSpec, gpu: Gpus) -> None:
    """Refuse, before any download, a job this worker cannot train."""
    if problems := engine_problems(spec):
        raise JobError("engine_failed", "; ".join(problems))
    gpus.check_ram(spec.model_name, spec.host_ram_gb, len(gpu.ids))
