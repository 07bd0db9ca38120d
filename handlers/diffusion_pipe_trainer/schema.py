"""The trainer's job input (seed 002), validated before any download or GPU work.

`training` keeps the seed's documented keys typed with their defaults and passes any
other key through to the engine's TOML; keys the engine would reject, keys that would
break the TOML (null, nested junk) and keys the worker owns (paths) are refused here.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.jobs import JobError, parse_input
from common.uploads.spec import UploadSpec
from handlers.diffusion_pipe_trainer.models import MODEL_TYPES, REGISTRY

ModelType = Literal["flux", "sdxl", "wan13", "wan14b_t2v", "wan14b_i2v", "qwen", "z_image_turbo"]
assert set(ModelType.__args__) == set(MODEL_TYPES)  # the schema and the registry list the same types

# diffusion-pipe's DTYPE_MAP keys.
DType = Literal["float32", "float16", "bfloat16", "float8", "float8_e5m2"]
# The engine implements only these two (anything else raises NotImplementedError).
VideoClipMode = Literal["single_beginning", "single_middle"]

# Keys the worker writes itself: a user value would point the engine at the wrong files.
RESERVED_KEYS = {
    "output_dir": "the worker sets it to the job's training_outputs folder",
    "dataset": "the worker writes dataset.toml from the downloaded dataset",
    "eval_datasets": "evaluation datasets are not supported by this worker",
    "resume_from_checkpoint": "use the request's top-level 'resume' field",
}
# Keys the engine refuses outright.
ENGINE_REJECTS = {
    "alpha": "diffusion-pipe forces alpha = rank and raises NotImplementedError when alpha is set",
    "lora_alpha": "diffusion-pipe forces alpha = rank and raises NotImplementedError when alpha is set",
}
# Pass-through keys that belong to dataset.toml or to the [model] table rather than the top level.
DATASET_KEYS = {"enable_ar_bucket", "min_ar", "max_ar", "num_ar_buckets", "ar_buckets", "resolutions",
                "shuffle_tags", "caption_prefix", "cache_shuffle_num"}
MODEL_KEYS = {"transformer_dtype", "diffusion_model_dtype", "timestep_sample_method", "shift", "flux_shift",
              "min_t", "max_t", "unet_lr", "text_encoder_1_lr", "text_encoder_2_lr", "v_pred", "min_snr_gamma",
              "guidance", "sigmoid_scale", "llm_path", "transformer_path"}
# Tables the user may extend with a nested object.
TABLE_KEYS = {"adapter", "optimizer", "model", "monitoring"}

_TOML_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_toml_value(path: str, value: Any, depth: int = 0) -> None:
    """Refuse values TOML cannot hold (null, NaN) or that nest beyond what the engine reads."""
    if value is None:
        raise ValueError(f"{path}: null is not allowed (TOML has no null; leave the key out instead)")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{path}: must be a finite number")
    if depth > 3:
        raise ValueError(f"{path}: nested too deeply")
    if isinstance(value, dict):
        for k, v in value.items():
            if not _TOML_KEY.match(str(k)):
                raise ValueError(f"{path}.{k}: key names may use letters, digits, '_' and '-' only")
            _check_toml_value(f"{path}.{k}", v, depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_toml_value(f"{path}[{i}]", v, depth + 1)
    elif not isinstance(value, (str, int, float, bool)):
        raise ValueError(f"{path}: unsupported value type {type(value).__name__}")


class DatasetSpec(_Strict):
    type: Literal["images", "videos", "both", "precaptioned"] = Field(
        ..., description="what the archives hold; precaptioned: every file has a same-name .txt")
    images_url: str | None = Field(None, min_length=1, max_length=4096,
                                   description="zip or tar of images (https, s3:// or hf://)")
    videos_url: str | None = Field(None, min_length=1, max_length=4096,
                                   description="zip or tar of videos (https, s3:// or hf://)")
    trigger_word: str | None = Field(None, min_length=1, max_length=200,
                                     description="prepended once to every caption")
    image_repeats: int = Field(1, ge=1, le=1000, description="times each image is seen per epoch")
    video_repeats: int = Field(5, ge=1, le=1000, description="times each video is seen per epoch")
    sha256: dict[Literal["images", "videos"], str] | None = Field(
        None, description="expected sha256 of each archive, checked after download"
    )

    @field_validator("trigger_word")
    @classmethod
    def _one_line(cls, v: str | None) -> str | None:
        if v is not None and ("\n" in v or not v.strip()):
            raise ValueError("must be a single non-blank line")
        return v.strip() if v else v

    @field_validator("images_url", "videos_url")
    @classmethod
    def _url_scheme(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^(https?|s3|hf)://", v):
            raise ValueError("must be an http(s)://, s3:// or hf:// URL")
        return v

    @model_validator(mode="after")
    def _urls_for_type(self) -> DatasetSpec:
        if self.type in ("images", "both") and not self.images_url:
            raise ValueError(f"type '{self.type}' needs 'images_url'")
        if self.type in ("videos", "both") and not self.videos_url:
            raise ValueError(f"type '{self.type}' needs 'videos_url'")
        if self.type == "images" and self.videos_url:
            raise ValueError("type 'images' takes no 'videos_url' (use type 'both')")
        if self.type == "videos" and self.images_url:
            raise ValueError("type 'videos' takes no 'images_url' (use type 'both')")
        if self.type == "precaptioned" and not (self.images_url or self.videos_url):
            raise ValueError("type 'precaptioned' needs 'images_url' and/or 'videos_url'")
        return self

    def kinds(self) -> list[str]:
        """The media kinds this dataset brings: a subset of ["images", "videos"]."""
        return [k for k, url in (("images", self.images_url), ("videos", self.videos_url)) if url]


class TrainingSpec(BaseModel):
    """The seed's documented keys (typed, with its defaults); any other key passes through."""

    model_config = ConfigDict(extra="allow")

    epochs: int = Field(100, ge=1, le=100_000, description="epochs to train")
    learning_rate: float = Field(2e-5, gt=0, le=1.0, description="[optimizer] lr")
    batch_size: int = Field(1, ge=1, le=256, description="micro_batch_size_per_gpu")
    gradient_accumulation_steps: int = Field(4, ge=1, le=1024, description="micro-batches per optimizer step")
    gradient_clipping: float = Field(1.0, ge=0, description="gradient norm clip")
    warmup_steps: int = Field(100, ge=0, description="learning-rate warm-up steps")
    lora_rank: int = Field(32, ge=1, le=1024, description="[adapter] rank (alpha is always the rank)")
    lora_dtype: DType = Field("bfloat16", description="[adapter] dtype")
    save_every_n_epochs: int = Field(10, ge=1, description="save a LoRA every N epochs")
    checkpoint_every_n_minutes: int | None = Field(120, ge=1, description="DeepSpeed checkpoint (for resume) "
                                                                       "every N minutes")
    save_dtype: DType = Field("bfloat16", description="dtype of the saved LoRA")
    optimizer_type: str = Field("adamw_optimi", min_length=1, max_length=64, description="[optimizer] type")
    optimizer_betas: list[float] = Field(default_factory=lambda: [0.9, 0.99], min_length=2, max_length=2,
                                         description="[optimizer] betas")
    optimizer_weight_decay: float = Field(0.01, ge=0, description="[optimizer] weight_decay")
    optimizer_eps: float = Field(1e-8, gt=0, description="[optimizer] eps")
    video_clip_mode: VideoClipMode | None = Field(
        None, description="default: single_middle (seed), single_beginning for wan14b_i2v"
    )
    frame_buckets: list[int] | None = Field(None, min_length=1, description="default from the model registry")
    resolution: int | None = Field(None, ge=64, le=4096, description="default from the model registry")
    activation_checkpointing: bool | Literal["unsloth"] = Field(True, description="trade compute for memory")
    caching_batch_size: int = Field(1, ge=1, description="batch size while caching latents and embeddings")
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps")
    checkpoint_every_n_epochs: int | None = Field(None, ge=1, description="instead of "
                                                  "checkpoint_every_n_minutes")

    @field_validator("frame_buckets")
    @classmethod
    def _positive_buckets(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(b < 1 for b in v):
            raise ValueError("frame counts must be >= 1")
        return sorted(set(v)) if v is not None else v

    @field_validator("optimizer_type")
    @classmethod
    def _optimizer_name(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9_.]+$", v):
            raise ValueError("must be an optimizer name such as 'adamw_optimi' or 'AdamW8bitKahan'")
        return v

    @model_validator(mode="after")
    def _passthrough_keys(self) -> TrainingSpec:
        errors = []
        for key, value in (self.model_extra or {}).items():
            if key in RESERVED_KEYS:
                errors.append(f"{key}: not accepted, {RESERVED_KEYS[key]}")
            elif key in ENGINE_REJECTS:
                errors.append(f"{key}: not accepted, {ENGINE_REJECTS[key]}")
            elif not _TOML_KEY.match(key):
                errors.append(f"{key}: key names may use letters, digits, '_' and '-' only")
            elif isinstance(value, dict) and key not in TABLE_KEYS:
                errors.append(f"{key}: only {sorted(TABLE_KEYS)} may be objects")
            else:
                try:
                    _check_toml_value(key, value)
                except ValueError as exc:
                    errors.append(str(exc))
                if key == "model" and isinstance(value, dict) and "type" in value:
                    errors.append("model.type: not accepted, it follows the request's model_type")
                if key == "adapter" and isinstance(value, dict) and "alpha" in value:
                    errors.append(f"adapter.alpha: not accepted, {ENGINE_REJECTS['alpha']}")
                if key in ("transformer_dtype", "diffusion_model_dtype") and value not in DType.__args__:
                    errors.append(f"{key}: must be one of {list(DType.__args__)}")
        if self.checkpoint_every_n_epochs is not None and "checkpoint_every_n_minutes" in self.model_fields_set:
            errors.append("checkpoint_every_n_epochs: use either it or checkpoint_every_n_minutes, not both")
        if errors:
            raise ValueError("; ".join(errors))
        if self.checkpoint_every_n_epochs is not None:
            self.checkpoint_every_n_minutes = None
        return self

    def passthrough(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ApiKeys(_Strict):
    huggingface_token: str | None = Field(None, min_length=1, description="gated weights (flux); env HF_TOKEN")
    gemini_api_key: str | None = Field(None, min_length=1, description="video captions; env GEMINI_API_KEY")


class CaptionOptions(_Strict):
    prompt: str | None = Field(None, min_length=1, max_length=2000,
                               description="JoyCaption prompt for images (default: a 50-word description)")
    video_prompt: str | None = Field(None, min_length=1, max_length=4000, description="Gemini prompt for videos")
    overwrite: bool = Field(False, description="caption every file again, even those with a .txt")
    gemini_model: str | None = Field(None, min_length=1, max_length=100,
                                     description="Gemini model name (default: env GEMINI_MODEL or the built-in)")
    max_new_tokens: int = Field(300, ge=1, le=1024, description="longest caption in tokens")


class TrainRequest(_Strict):
    model_type: ModelType = Field(..., description="the model to train a LoRA for")
    dataset: DatasetSpec | None = Field(None, description="the training data (left out when resuming)")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="hyperparameters; other keys "
                                   "pass through to the engine's TOML")
    api_keys: ApiKeys = Field(default_factory=ApiKeys, description="keys this job needs (else the environment's)")
    output: UploadSpec | None = Field(None, description="where the LoRA goes (default: auto)")
    caption: CaptionOptions = Field(default_factory=CaptionOptions, description="captioning options")
    dry_run: bool = Field(False, description="stop after the configs are written and return them")
    resume: str | None = Field(None, min_length=1, max_length=128,
                               description="job id whose last checkpoint (on the volume) this job continues")
    timeout_s: float | None = Field(
        None, gt=0, description="time limit in seconds for everything up to the end of training (download, "
                                "captioning, model fetch, training); the upload after it is not cut off")

    @field_validator("resume")
    @classmethod
    def _job_id(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^[A-Za-z0-9_.-]+$", v):
            raise ValueError("must be a job id (letters, digits, '_', '.', '-')")
        return v


def parse_request(raw: Any) -> TrainRequest:
    """Validate job input: field types, then the checks that span fields. Raises `JobError("invalid_input")`."""
    req = parse_input(TrainRequest, raw)
    errors = cross_field_errors(req)
    if errors:
        raise JobError("invalid_input", "; ".join(errors), errors)
    return req


def cross_field_errors(req: TrainRequest) -> list[str]:
    spec = REGISTRY[req.model_type]
    errors = []
    if req.dataset is None and req.resume is None:
        errors.append("dataset: required (only a 'resume' job reuses an earlier job's dataset)")
    if req.dataset is not None and req.resume is not None:
        errors.append(f"dataset: leave it out when resuming; the job continues on the dataset of job '{req.resume}'")
    if req.model_type == "flux" and not (req.api_keys.huggingface_token or _env_hf_token()):
        errors.append("api_keys.huggingface_token: flux needs a Hugging Face token "
                      "(FLUX.1-dev is gated; accept its licence with the token's account)")
    if req.dataset is not None:
        ds = req.dataset
        for kind in ds.kinds():
            if kind not in spec.media:
                errors.append(
                    f"dataset.{kind}_url: {spec.model_name} trains on {' and '.join(spec.media)} only"
                    + (" (i2v conditions on a video's first frame; any image fails the engine)"
                       if req.model_type == "wan14b_i2v" else "")
                )
        if ds.type in ("videos", "both") and not (req.api_keys.gemini_api_key or _env_gemini_key()):
            errors.append(f"api_keys.gemini_api_key: dataset type '{ds.type}' captions videos with Gemini "
                          "and needs a key (or use type 'precaptioned')")
    if req.training.frame_buckets is not None and spec.frame_buckets is None:
        errors.append(f"training.frame_buckets: {spec.model_name} is an image model")
    return errors


def _env_hf_token() -> str | None:
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")


def _env_gemini_key() -> str | None:
    return os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY")
