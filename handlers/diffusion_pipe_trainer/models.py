"""Model registry: everything that differs per `model_type`, as data.

For each model type: the display name (the response's `model_name`), the Hugging Face
files fetched into the volume's shared `models/` dir, the `[model]` table of the
engine's config with `{models}` standing for that dir, dataset defaults, and the
file name the engine writes into each `epochN/` directory.

Facts come from tdrussell/diffusion-pipe at the commit the image pins (DIFFUSION_PIPE_COMMIT in
images/diffusion-pipe-trainer/Dockerfile):
`type` names in train.py, the `save_adapter` file names in models/*.py, and the key names
read by each model class (sdxl's `checkpoint_path`, z_image's `split_files/` paths).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

JOYCAPTION_REPO = "fancyfeast/llama-joycaption-beta-one-hf-llava"
JOYCAPTION_DIR = "llama-joycaption-beta-one-hf-llava"


@dataclass(frozen=True)
class Fetch:
    """Files of one Hugging Face repo, downloaded into `models/<local_dir>/`."""

    repo_id: str
    local_dir: str
    allow_patterns: tuple[str, ...] | None = None  # None = the whole repo
    ignore_patterns: tuple[str, ...] = ()
    gated: bool = False  # needs a token whose owner accepted the licence
    # Paths (relative to local_dir) that must exist once the download is complete.
    required: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelSpec:
    model_type: str
    model_name: str
    fetch: tuple[Fetch, ...]
    model_table: dict[str, Any]  # the [model] table; "{models}" is replaced by the models dir
    lora_file: str  # what the engine saves in each epochN/ dir
    lora_format: str
    media: tuple[str, ...]  # which dataset kinds the model trains on: "images", "videos"
    resolution: int
    frame_buckets: tuple[int, ...] | None = None  # video models only
    video_clip_mode: str | None = None  # the engine's default unless set here
    note: str = ""
    # ComfyUI-based model classes call the transformer's dtype key `diffusion_model_dtype`.
    transformer_dtype_key: str = "transformer_dtype"
    # Host RAM (GB) one training process needs: each GPU's process loads the whole model (the sizes of the
    # weights it reads, in the dtype it loads them, plus headroom). An estimate, used to refuse what cannot fit.
    host_ram_gb: float = 16
    # Wan's attention asserts flash-attn 2 (diffusion-pipe models/wan/attention.py:107).
    needs_flash_attn: bool = False


def _wan(model_type: str, name: str, repo: str, local: str, *, i2v: bool, host_ram_gb: float) -> ModelSpec:
    required = ["config.json", "Wan2.1_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth", "google/umt5-xxl"]
    if i2v:
        required += ["models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth", "xlm-roberta-large"]
    return ModelSpec(
        model_type=model_type,
        model_name=name,
        fetch=(Fetch(repo, local, ignore_patterns=("*.mp4", "assets/*", "examples/*"), required=tuple(required)),),
        model_table={
            "type": "wan",
            "ckpt_path": "{models}/" + local,
            "dtype": "bfloat16",
            "transformer_dtype": "float8" if "14B" in repo else "bfloat16",
            "timestep_sample_method": "logit_normal",
        },
        lora_file="adapter_model.safetensors",
        lora_format="ComfyUI",
        media=("videos",) if i2v else ("images", "videos"),
        resolution=512,
        frame_buckets=(1, 33),
        # i2v conditions on the clip's first frame, so the clip must start at the beginning.
        video_clip_mode="single_beginning" if i2v else None,
        host_ram_gb=host_ram_gb,
        needs_flash_attn=True,
    )


REGISTRY: dict[str, ModelSpec] = {
    spec.model_type: spec
    for spec in (
        ModelSpec(
            model_type="flux",
            model_name="Flux",
            fetch=(
                Fetch(
                    "black-forest-labs/FLUX.1-dev",
                    "FLUX.1-dev",
                    allow_patterns=(
                        "model_index.json", "scheduler/*", "text_encoder/*", "text_encoder_2/*",
                        "tokenizer/*", "tokenizer_2/*", "transformer/*", "vae/*",
                    ),
                    gated=True,
                    required=("model_index.json", "transformer", "vae", "text_encoder_2"),
                ),
            ),
            model_table={
                "type": "flux",
                "diffusers_path": "{models}/FLUX.1-dev",
                "dtype": "bfloat16",
                "transformer_dtype": "float8",
                "flux_shift": True,
            },
            lora_file="pytorch_lora_weights.safetensors",
            lora_format="Diffusers",
            media=("images",),
            resolution=1024,
            host_ram_gb=40,  # transformer 23.8 GB + T5-XXL 9.5 GB (bf16) + CLIP, VAE
        ),
        ModelSpec(
            model_type="sdxl",
            model_name="SDXL",
            fetch=(
                Fetch(
                    "stabilityai/stable-diffusion-xl-base-1.0",
                    "sdxl",
                    allow_patterns=("sd_xl_base_1.0.safetensors",),
                    required=("sd_xl_base_1.0.safetensors",),
                ),
            ),
            model_table={
                "type": "sdxl",
                "checkpoint_path": "{models}/sdxl/sd_xl_base_1.0.safetensors",
                "dtype": "bfloat16",
            },
            lora_file="lora.safetensors",
            lora_format="Kohya",
            media=("images",),
            resolution=1024,
            note="LoRA also trains both text encoders",
            host_ram_gb=12,  # the 6.9 GB checkpoint
        ),
        # 1.3B: the fp32 transformer (5.7 GB) and the umt5-xxl encoder (11.4 GB); 14B: the sharded transformer is
        # read whole (~57 GB) plus the encoder; i2v adds the CLIP (4.8 GB).
        _wan("wan13", "Wan 1.3B", "Wan-AI/Wan2.1-T2V-1.3B", "Wan2.1-T2V-1.3B", i2v=False, host_ram_gb=24),
        _wan("wan14b_t2v", "Wan 14B T2V", "Wan-AI/Wan2.1-T2V-14B", "Wan2.1-T2V-14B", i2v=False, host_ram_gb=72),
        _wan("wan14b_i2v", "Wan 14B I2V", "Wan-AI/Wan2.1-I2V-14B-480P", "Wan2.1-I2V-14B-480P", i2v=True,
             host_ram_gb=78),
        ModelSpec(
            model_type="qwen",
            model_name="Qwen Image",
            fetch=(
                Fetch(
                    "Qwen/Qwen-Image",
                    "Qwen-Image",
                    allow_patterns=("model_index.json", "transformer/*", "text_encoder/*", "vae/*"),
                    required=("transformer", "text_encoder", "vae"),
                ),
            ),
            model_table={
                "type": "qwen_image",
                "diffusers_path": "{models}/Qwen-Image",
                "dtype": "bfloat16",
                "transformer_dtype": "float8",
                "timestep_sample_method": "logit_normal",
            },
            lora_file="adapter_model.safetensors",
            lora_format="ComfyUI",
            media=("images",),
            resolution=1024,
            host_ram_gb=64,  # transformer 40.9 GB + Qwen2.5-VL text encoder 16.6 GB (bf16) + VAE
        ),
        ModelSpec(
            model_type="z_image_turbo",
            model_name="Z Image Turbo",
            fetch=(
                Fetch(
                    "Comfy-Org/z_image_turbo",
                    "z_image",
                    allow_patterns=(
                        "split_files/diffusion_models/z_image_turbo_bf16.safetensors",
                        "split_files/text_encoders/qwen_3_4b.safetensors",
                        "split_files/vae/ae.safetensors",
                    ),
                    required=(
                        "split_files/diffusion_models/z_image_turbo_bf16.safetensors",
                        "split_files/text_encoders/qwen_3_4b.safetensors",
                        "split_files/vae/ae.safetensors",
                    ),
                ),
                Fetch(
                    "ostris/zimage_turbo_training_adapter",
                    "zimage_adapter",
                    allow_patterns=("zimage_turbo_training_adapter_v2.safetensors",),
                    required=("zimage_turbo_training_adapter_v2.safetensors",),
                ),
            ),
            model_table={
                "type": "z_image",
                "diffusion_model": "{models}/z_image/split_files/diffusion_models/z_image_turbo_bf16.safetensors",
                "vae": "{models}/z_image/split_files/vae/ae.safetensors",
                "text_encoders": [
                    {"path": "{models}/z_image/split_files/text_encoders/qwen_3_4b.safetensors", "type": "lumina2"}
                ],
                "merge_adapters": ["{models}/zimage_adapter/zimage_turbo_training_adapter_v2.safetensors"],
                "dtype": "bfloat16",
            },
            lora_file="adapter_model.safetensors",
            lora_format="ComfyUI",
            media=("images",),
            resolution=1024,
            transformer_dtype_key="diffusion_model_dtype",
            host_ram_gb=28,  # transformer 12.3 GB + qwen_3_4b 8 GB + VAE + the merged adapter
        ),
    )
}

MODEL_TYPES = tuple(REGISTRY)


def fill_paths(value: Any, models_dir: str) -> Any:
    """Replace `{models}` in every string of a (nested) registry value."""
    if isinstance(value, str):
        return value.replace("{models}", models_dir)
    if isinstance(value, list):
        return [fill_paths(v, models_dir) for v in value]
    if isinstance(value, dict):
        return {k: fill_paths(v, models_dir) for k, v in value.items()}
    return value
