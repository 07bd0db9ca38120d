"""The trainer's job outputs: a finished training, or a dry run (docs/diffusion-pipe-trainer.md).

The pipeline checks what it returns against `TrainOutcome` / `DryRunOutcome` (`common.result_models.checked`), so a
result that drifts from its documentation fails every job test; `common.jobs.run_job_async` then
adds `timings` and `worker_version`, which makes it a `TrainResult` / `DryRunResult`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from common.result_models import Strict, UploadRecord


class LoraOutput(UploadRecord):
    network_volume_path: str = Field(..., description="the LoRA's folder on the network volume (kept there)")


_DATASET = "counts of images and videos, captions made and kept, trigger word"
_WARNINGS = ("what will not train as asked: files in an aspect-ratio bucket the engine cuts to a multiple of the "
             "global batch (named), videos too short for every frame bucket, half-written saves removed on resume")
_GPUS = "the GPU indices trained on (data parallel over all of them unless pipeline_stages splits them)"


class TrainOutcome(Strict):
    status: Literal["success"] = Field(..., description="success (a failure is an error result instead)")
    job_id: str = Field(..., description="the RunPod job id (also the folder names on the volume)")
    model_type: str = Field(..., description="the model_type trained")
    model_name: str = Field(..., description="its human name")
    epochs_completed: int = Field(..., description="epochs trained")
    latest_epoch: str = Field(..., description="the delivered epoch folder, e.g. epoch10")
    saved_epochs: list[str] = Field(..., description="every epoch folder the engine saved")
    steps: int = Field(..., description="optimizer steps run")
    final_loss: float | None = Field(..., description="the last loss the engine logged")
    lora_file: str = Field(..., description="file name of the delivered LoRA")
    lora_format: str = Field(..., description="Diffusers (flux), Kohya (sdxl) or ComfyUI (Wan, Qwen, Z-Image)")
    dataset: dict[str, Any] = Field(..., description=_DATASET)
    output: LoraOutput = Field(..., description="the upload record of the LoRA")
    gpus: list[int] = Field(..., description=_GPUS)
    warnings: list[str] = Field(..., description=_WARNINGS + "; and size buckets the engine logged as dropped")


class TrainResult(TrainOutcome):
    timings: dict[str, float] = Field(..., description="seconds per stage (download, caption, config, models, "
                                                       "training, upload, total)")
    worker_version: str = Field(..., description="version of the worker image")


class DryRunOutcome(Strict):
    status: Literal["dry_run"] = Field(..., description="dry_run: nothing was trained")
    job_id: str = Field(..., description="the RunPod job id")
    model_type: str = Field(..., description="the model_type asked for")
    model_name: str = Field(..., description="its human name")
    configs: dict[str, str] = Field(..., description="the generated config.toml and dataset.toml")
    config_dir: str = Field(..., description="where they were written on the volume")
    dataset: dict[str, Any] = Field(..., description=_DATASET)
    model_paths: dict[str, str] = Field(..., description="Hugging Face repo -> folder the weights would be read from")
    estimated_steps_per_epoch: int = Field(..., description="optimizer steps per epoch, estimated from the dataset")
    estimated_total_steps: int = Field(..., description="steps of the whole training")
    gpus: list[int] = Field(..., description=_GPUS)
    command: list[str] = Field(..., description="the exact argv the worker would run (DeepSpeed launcher, "
                                                "--include of the GPUs, --master_port also to train.py)")
    warnings: list[str] = Field(..., description=_WARNINGS + "; and what would make a real job be refused "
                                                              "(e.g. flash-attn missing for Wan)")
    lora_file: str = Field(..., description="file name the LoRA would have")
    lora_format: str = Field(..., description="format the LoRA would have")


class DryRunResult(DryRunOutcome):
    timings: dict[str, float] = Field(..., description="seconds per stage")
    worker_version: str = Field(..., description="version of the worker image")
