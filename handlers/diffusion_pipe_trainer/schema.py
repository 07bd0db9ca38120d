"""The trainer's job input (docs/diffusion-pipe-trainer.md, "Request"), validated before any download or GPU work.

`training` keeps the documented keys typed with their defaults and passes any
other key through to where the engine reads it (engine_keys: top level, `[model]` or
dataset.toml). Refused here: keys the engine reads nowhere, keys it would reject, keys that
would break the TOML (null, nested junk) or exceed a bound, and keys the worker owns (paths).
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.jobs import JobError, parse_input
from common.uploads.spec import UploadSpec
from handlers.diffusion_pipe_trainer import engine_keys, settings
from handlers.diffusion_pipe_trainer.models import MODEL_TYPES, REGISTRY

ModelType = Literal["flux", "sdxl", "wan13", "wan14b_t2v", "wan14b_i2v", "qwen", "z_image_turbo"]
assert set(ModelType.__args__) == set(MODEL_TYPES)  # the schema and the registry list the same types

# diffusion-pipe's DTYPE_MAP keys.
DType = Literal["float32", "float16", "bfloat16", "float8", "float8_e5m2"]
# The engine implements only these two (anything else raises NotImplementedError).
VideoClipMode = Literal["single_beginning", "single_middle"]
MAX_FRAMES = 1024

# Keys the worker writes itself: a user value would point the engine at the wrong files.
RESERVED_KEYS = {
    "output_dir": "the worker sets it to the job's training_outputs folder",
    "dataset": "the worker writes dataset.toml from the downloaded dataset",
    "resume_from_checkpoint": "use the request's top-level 'resume' field",
}
# Keys the engine refuses outright (train.py:118-121).
ENGINE_REJECTS = {
    "alpha": "diffusion-pipe forces alpha = rank and raises NotImplementedError when alpha is set",
    "lora_alpha": "diffusion-pipe forces alpha = rank and raises NotImplementedError when alpha is set",
}
# Tables the user may extend with a nested object, and the keys each takes (model/optimizer: per model type
# and per optimizer, checked in cross_field_errors).
TABLE_KEYS = {"adapter", "optimizer", "model", "monitoring"}
MONITORING_KEYS = {"enable_wandb", "wandb_api_key", "wandb_tracker_name", "wandb_run_name"}  # train.py:561-565
MODEL_KEYS = set().union(*engine_keys.MODEL.values()) | {"transformer_dtype", "diffusion_model_dtype"}
# More than 3 resolutions: the engine prints a warning and quit()s, exit code 0, nothing trained
# (utils/dataset.py:524-531).
MAX_RESOLUTIONS = 3
# Bounds of pass-through numbers: (min, max). Any other integer is bounded by MAX_INT, lists by MAX_LIST.
PASSTHROUGH_BOUNDS: dict[str, tuple[float, float]] = {
    "blocks_to_swap": (0, 200), "pipeline_stages": (1, 64), "map_num_proc": (1, 64),
    "image_micro_batch_size_per_gpu": (1, 256), "logging_steps": (1, 1_000_000),
    "save_every_n_steps": (1, 10_000_000), "save_every_n_examples": (1, 1_000_000_000),
    "num_ar_buckets": (1, 64), "cache_shuffle_num": (0, 64), "min_ar": (0.05, 20), "max_ar": (0.05, 20),
    "subsample_ratio": (0.001, 1), "uncond_fraction": (0, 1), "force_constant_lr": (0, 1),
    "huber_delta": (0, 1000), "smooth_l1_beta": (0, 1000), "sigmoid_scale": (0.01, 100), "shift": (0.01, 100),
    "min_t": (0, 1), "max_t": (0, 1), "min_snr_gamma": (0, 1000), "guidance": (0, 100),
    "unet_lr": (0, 1), "text_encoder_1_lr": (0, 1), "text_encoder_2_lr": (0, 1),
}
PASSTHROUGH_CHOICES: dict[str, tuple] = {
    "lr_scheduler": ("constant", "linear", "cosine"),  # train.py:850-857
    "timestep_sample_method": ("logit_normal", "uniform"),  # utils/common.py:127-131
    "partition_method": ("parameters", "uniform", "type"),
}
MAX_INT = 1_000_000_000
MAX_LIST = 64
MAX_STR = 256

_TOML_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_toml_value(path: str, value: Any, depth: int = 0) -> None:
    """Refuse values TOML cannot hold (null, NaN), that nest beyond what the engine reads, or that are unbounded."""
    if value is None:
        raise ValueError(f"{path}: null is not allowed (TOML has no null; leave the key out instead)")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{path}: must be a finite number")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        raise ValueError(f"{path}: must be at most {MAX_INT}")
    if isinstance(value, str) and len(value) > MAX_STR:
        raise ValueError(f"{path}: at most {MAX_STR} characters")
    if depth > 3:
        raise ValueError(f"{path}: nested too deeply")
    if isinstance(value, dict):
        if len(value) > MAX_LIST:
            raise ValueError(f"{path}: at most {MAX_LIST} keys")
        for k, v in value.items():
            if not _TOML_KEY.match(str(k)):
                raise ValueError(f"{path}.{k}: key names may use letters, digits, '_' and '-' only")
            _check_toml_value(f"{path}.{k}", v, depth + 1)
    elif isinstance(value, list):
        if len(value) > MAX_LIST:
            raise ValueError(f"{path}: at most {MAX_LIST} entries")
        for i, v in enumerate(value):
            _check_toml_value(f"{path}[{i}]", v, depth + 1)
    elif not isinstance(value, (str, int, float, bool)):
        raise ValueError(f"{path}: unsupported value type {type(value).__name__}")
    key = path.rsplit(".", 1)[-1]
    if key in PASSTHROUGH_BOUNDS:
        lo, hi = PASSTHROUGH_BOUNDS[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise ValueError(f"{path}: must be a number from {lo:g} to {hi:g}")
    if key in PASSTHROUGH_CHOICES and value not in PASSTHROUGH_CHOICES[key]:
        raise ValueError(f"{path}: must be one of {list(PASSTHROUGH_CHOICES[key])}")


def _check_resolutions(value: Any) -> None:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_RESOLUTIONS:
        raise ValueError(f"resolutions: a list of 1 to {MAX_RESOLUTIONS} sizes (with more, diffusion-pipe quits "
                         "without training and exits 0, utils/dataset.py:524-531)")
    for r in value:
        sides = r if isinstance(r, list) and len(r) == 2 else [r]
        if not all(isinstance(x, int) and not isinstance(x, bool) and 64 <= x <= 4096 for x in sides):
            raise ValueError("resolutions: each entry is a size from 64 to 4096 or a [width, height] pair of them")


def _check_size_buckets(value: Any) -> None:
    ok = isinstance(value, list) and 1 <= len(value) <= MAX_LIST and all(
        isinstance(b, list) and len(b) == 3 and all(isinstance(x, int) and not isinstance(x, bool) for x in b)
        and 64 <= b[0] <= 4096 and 64 <= b[1] <= 4096 and 1 <= b[2] <= MAX_FRAMES for b in value)
    if not ok:
        raise ValueError(f"size_buckets: a list of [width, height, frames] (sides 64-4096, frames 1-{MAX_FRAMES})")


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
    """The seed's documented keys (typed, with its defaults); any other key passes through to where the
    engine reads it (engine_keys), and a key the engine reads nowhere is refused."""

    model_config = ConfigDict(extra="allow")

    epochs: int = Field(100, ge=1, le=100_000, description="epochs to train")
    learning_rate: float = Field(2e-5, gt=0, le=1.0, description="[optimizer] lr")
    batch_size: int = Field(1, ge=1, le=256, description="micro_batch_size_per_gpu")
    gradient_accumulation_steps: int = Field(4, ge=1, le=1024, description="micro-batches per optimizer step")
    gradient_clipping: float = Field(1.0, ge=0, le=10_000, description="gradient norm clip")
    warmup_steps: int = Field(100, ge=0, le=1_000_000, description="learning-rate warm-up steps")
    lora_rank: int = Field(32, ge=1, le=1024, description="[adapter] rank (alpha is always the rank)")
    lora_dtype: DType = Field("bfloat16", description="[adapter] dtype")
    save_every_n_epochs: int = Field(10, ge=1, le=100_000, description="save a LoRA every N epochs")
    checkpoint_every_n_minutes: int | None = Field(120, ge=1, le=10_080, description="DeepSpeed checkpoint (for "
                                                                                     "resume) every N minutes")
    save_dtype: DType = Field("bfloat16", description="dtype of the saved LoRA")
    optimizer_type: str = Field("adamw_optimi", min_length=1, max_length=64,
                                description="[optimizer] type: one of the optimizers train.py knows")
    optimizer_betas: list[float] = Field(default_factory=lambda: [0.9, 0.99], min_length=2, max_length=2,
                                         description="[optimizer] betas (written only for optimizers that take them)")
    optimizer_weight_decay: float = Field(0.01, ge=0, le=10, description="[optimizer] weight_decay")
    optimizer_eps: float = Field(1e-8, gt=0, le=1, description="[optimizer] eps (written only for optimizers that "
                                                               "take it)")
    video_clip_mode: VideoClipMode | None = Field(
        None, description="default: single_middle (seed), single_beginning for wan14b_i2v"
    )
    frame_buckets: list[int] | None = Field(None, min_length=1, max_length=16,
                                            description="default from the model registry")
    resolution: int | None = Field(None, ge=64, le=4096, description="default from the model registry")
    activation_checkpointing: bool | Literal["unsloth"] = Field(True, description="trade compute for memory")
    caching_batch_size: int = Field(1, ge=1, le=64, description="batch size while caching latents and embeddings")
    max_steps: int | None = Field(None, ge=1, le=10_000_000, description="stop after this many steps")
    checkpoint_every_n_epochs: int | None = Field(None, ge=1, le=100_000, description="instead of "
                                                  "checkpoint_every_n_minutes")

    @field_validator("frame_buckets")
    @classmethod
    def _positive_buckets(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(not 1 <= b <= MAX_FRAMES for b in v):
            raise ValueError(f"frame counts must be from 1 to {MAX_FRAMES}")
        return sorted(set(v)) if v is not None else v

    @field_validator("optimizer_betas")
    @classmethod
    def _betas(cls, v: list[float]) -> list[float]:
        if any(not 0 <= b < 1 for b in v):
            raise ValueError("each beta must be from 0 to below 1")
        return v

    @field_validator("optimizer_type")
    @classmethod
    def _optimizer_name(cls, v: str) -> str:
        return _optimizer_name(v)

    @model_validator(mode="after")
    def _passthrough_keys(self) -> TrainingSpec:
        errors = []
        for key, value in (self.model_extra or {}).items():
            try:
                _check_passthrough(key, value)
            except ValueError as exc:
                errors.append(str(exc))
        if self.checkpoint_every_n_epochs is not None and "checkpoint_every_n_minutes" in self.model_fields_set:
            errors.append("checkpoint_every_n_epochs: use either it or checkpoint_every_n_minutes, not both")
        extra = self.model_extra or {}
        if "resolutions" in extra and self.resolution is not None:
            errors.append("resolutions: use either it or resolution, not both")
        opt = extra.get("optimizer")
        if isinstance(opt, dict) and "type" in opt and "optimizer_type" in self.model_fields_set \
                and str(opt["type"]).lower() != self.optimizer_type.lower():
            errors.append("optimizer.type: use either it or optimizer_type, not both")
        if isinstance(extra.get("blocks_to_swap"), int) and extra["blocks_to_swap"] > 0 \
                and extra.get("pipeline_stages", 1) != 1:
            errors.append("blocks_to_swap: diffusion-pipe swaps blocks only with pipeline_stages = 1 (train.py:577)")
        if errors:
            raise ValueError("; ".join(errors))
        if self.checkpoint_every_n_epochs is not None:
            self.checkpoint_every_n_minutes = None
        return self

    def passthrough(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def optimizer(self) -> str:
        """The optimizer as train.py matches it (lower case, train.py:656): `optimizer.type` wins."""
        table = (self.model_extra or {}).get("optimizer") or {}
        return str(table.get("type", self.optimizer_type)).lower()


def _optimizer_name(v: str) -> str:
    if not isinstance(v, str) or v.lower() not in engine_keys.OPTIMIZER_KWARGS:
        raise ValueError(f"must be one of the optimizers diffusion-pipe knows: {list(engine_keys.OPTIMIZER_NAMES)}")
    return v


def _check_passthrough(key: str, value: Any) -> None:
    """Where `training.<key>` goes, or why it is refused (ValueError naming the key)."""
    if key in RESERVED_KEYS:
        raise ValueError(f"{key}: not accepted, {RESERVED_KEYS[key]}")
    if key in ENGINE_REJECTS:
        raise ValueError(f"{key}: not accepted, {ENGINE_REJECTS[key]}")
    if not _TOML_KEY.match(key):
        raise ValueError(f"{key}: key names may use letters, digits, '_' and '-' only")
    if key in engine_keys.WORKER_OWNED or key.endswith("_path"):
        raise ValueError(f"{key}: not accepted, the worker fetches the weights and sets every path itself")
    if key in engine_keys.NOT_SUPPORTED:
        raise ValueError(f"{key}: not accepted, {engine_keys.NOT_SUPPORTED[key]}")
    known = key in engine_keys.TOP_LEVEL or key in engine_keys.DATASET or key in MODEL_KEYS or key in TABLE_KEYS
    if not known:
        raise ValueError(f"{key}: diffusion-pipe reads no such key (neither train.py, utils/dataset.py nor a model "
                         "class), so it would be silently ignored")
    if isinstance(value, dict) and key not in TABLE_KEYS:
        raise ValueError(f"{key}: only {sorted(TABLE_KEYS)} may be objects")
    if key in TABLE_KEYS and not isinstance(value, dict):
        raise ValueError(f"{key}: must be an object")
    _check_toml_value(key, value)
    if key == "resolutions":
        _check_resolutions(value)
    if key == "size_buckets":
        _check_size_buckets(value)
    if key in ("transformer_dtype", "diffusion_model_dtype") and value not in DType.__args__:
        raise ValueError(f"{key}: must be one of {list(DType.__args__)}")
    if key == "model":
        for k, v in value.items():
            if k == "type":
                raise ValueError("model.type: not accepted, it follows the request's model_type")
            if k in engine_keys.WORKER_OWNED or k.endswith("_path"):
                raise ValueError(f"model.{k}: not accepted, the worker fetches the weights and sets every path itself")
            if k == "dtype" and v not in DType.__args__:
                raise ValueError(f"model.dtype: must be one of {list(DType.__args__)}")
    if key == "adapter":
        for k in value:
            if k in ENGINE_REJECTS:
                raise ValueError(f"adapter.{k}: not accepted, {ENGINE_REJECTS[k]}")
            if k in engine_keys.WORKER_OWNED:
                raise ValueError(f"adapter.{k}: not accepted, the worker does not load adapters from paths")
            if k not in engine_keys.ADAPTER:
                raise ValueError(f"adapter.{k}: diffusion-pipe reads no such adapter key "
                                 f"(it reads {sorted(engine_keys.ADAPTER)})")
        if value.get("type", "lora") not in ("lora", "lokr"):
            raise ValueError("adapter.type: must be 'lora' or 'lokr' (train.py:127-133)")
        if "dtype" in value and value["dtype"] not in DType.__args__:
            raise ValueError(f"adapter.dtype: must be one of {list(DType.__args__)}")
        if "rank" in value and not (isinstance(value["rank"], int) and 1 <= value["rank"] <= 1024):
            raise ValueError("adapter.rank: must be an integer from 1 to 1024")
    if key == "optimizer":
        if "type" in value:
            try:
                _optimizer_name(value["type"])
            except ValueError as exc:
                raise ValueError(f"optimizer.type: {exc}") from None
        if "lr" in value:
            raise ValueError("optimizer.lr: use training.learning_rate")
    if key == "monitoring":
        unknown = sorted(set(value) - MONITORING_KEYS)
        if unknown:
            raise ValueError(f"monitoring.{unknown[0]}: diffusion-pipe reads only {sorted(MONITORING_KEYS)}")


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
        None, gt=0, le=7 * 24 * 3600,
        description="time limit in seconds for everything up to the end of training (download, captioning, model "
                    "fetch, training); the upload after it is not cut off. Default: env TRAINING_TIMEOUT_S")

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
    errors += model_key_errors(req)
    errors += optimizer_errors(req.training)
    return errors


def model_key_errors(req: TrainRequest) -> list[str]:
    """[model] keys must be ones this model's class reads (engine_keys.MODEL); lokr only where it saves."""
    spec = REGISTRY[req.model_type]
    engine_type = spec.model_table["type"]
    reads = engine_keys.MODEL[engine_type]
    extra = req.training.passthrough()
    given = [(k, f"training.{k}") for k in extra if k in MODEL_KEYS]
    given += [(k, f"training.model.{k}") for k in (extra.get("model") or {}) if k != "dtype"]
    errors = []
    for key, name in given:
        if key in ("transformer_dtype", "diffusion_model_dtype"):
            key = spec.transformer_dtype_key
        if key not in reads:
            errors.append(f"{name}: diffusion-pipe's {engine_type} model reads no such key (it would be ignored); "
                          f"{spec.model_name} reads {sorted(reads)}")
    adapter = extra.get("adapter") or {}
    if adapter.get("type") == "lokr" and engine_type in engine_keys.LOKR_UNSUPPORTED:
        errors.append(f"training.adapter.type: {spec.model_name} cannot save a LoKr adapter (diffusion-pipe raises "
                      "NotImplementedError at the first save); use 'lora'")
    return errors


def optimizer_errors(training: TrainingSpec) -> list[str]:
    """The [optimizer] table goes to the optimizer's constructor as keyword arguments (train.py:666, 815): only
    what that class takes, or it fails with a TypeError after the whole dataset was cached."""
    name = training.optimizer()
    takes = engine_keys.OPTIMIZER_KWARGS[name] | engine_keys.OPTIMIZER_COMMON
    errors = []
    for seed_key, kwarg in (("optimizer_betas", "betas"), ("optimizer_eps", "eps"),
                            ("optimizer_weight_decay", "weight_decay")):
        if seed_key in training.model_fields_set and kwarg not in engine_keys.SEED_OPTIMIZER_KWARGS[name]:
            errors.append(f"training.{seed_key}: the {name} optimizer takes no '{kwarg}' in this form"
                          + (" (set training.optimizer.eps = [eps1, eps2])" if kwarg in takes else ""))
    table = training.passthrough().get("optimizer") or {}
    for key in table:
        if key not in takes:
            errors.append(f"training.optimizer.{key}: the {name} optimizer takes no '{key}' "
                          f"(it takes {sorted(takes - {'type'})})")
    if "beta2_half_life" in table and "betas" not in takes:
        errors.append(f"training.optimizer.beta2_half_life: the {name} optimizer has no betas (train.py:658-663)")
    return errors


def _env_hf_token() -> str | None:
    return settings.current().secret("hf_token")


def _env_gemini_key() -> str | None:
    return settings.current().secret("gemini_api_key")
