"""The /generate response (also the RunPod job output), as documented in docs/controlnet-pyworker.md."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from common.result_models import Strict, UploadRecord


class GenerateResponse(Strict):
    images: list[str] | None = Field(None, description="base64 PNGs, one per image (left out when uploaded)")
    format: Literal["png"] | None = Field(None, description="format of `images`")
    upload: UploadRecord | None = Field(None, description="the upload record, when the request had an `output` spec")
    seed: int = Field(..., description="seed of the first image")
    seeds: list[int] = Field(..., description="one seed per image: seed, seed+1, ...")
    model: str = Field(..., description="the variant used")
    era: str | None = Field(..., description="the era LoRA applied, if any")
    steps: int = Field(..., description="denoising steps run")
    cfg: float = Field(..., description="classifier-free guidance scale used")
    scheduler: str = Field(..., description="the scheduler used (e.g. euler_trailing, ddim_trailing, dpm_sde)")
    lora_strength: float | None = Field(..., description="weight of the era LoRA, if any")
    controlnet_strength: float = Field(..., description="ControlNet conditioning scale used")
    width: int = Field(..., description="image width in pixels")
    height: int = Field(..., description="image height in pixels")
    depth_source: str = Field(..., description="where the depth map came from: depth_map_b64, mock_depth or auto_depth")
    workload: float = Field(..., description="workload units of the request (the vast.ai cost)")
    timings: dict[str, float] = Field(..., description="seconds per stage (depth, load, inference, encode, "
                                                       "upload, total, ...)")
    worker_version: str = Field(..., description="version of the worker image")
