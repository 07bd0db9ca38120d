"""Tiny random-weight models for the controlnet-pyworker image, in its production layout.

`build(out_dir)` writes, under `out_dir` (usable as MODELS_DIR):
- `sdxl-base-1.0/` a diffusers SDXL folder (UNet, two CLIP text encoders + tokenizers, VAE,
  Euler scheduler) saved with `variant="fp16"` file names like the production download;
- `controlnet-depth-sdxl-1.0-small/` a depth ControlNet, `sdxl-vae-fp16-fix/` a VAE;
- `loras/*.safetensors` the speed LoRAs (Lightning, Hyper) and the era LoRAs, saved with
  diffusers' `save_lora_weights` so `load_lora_weights` reads them as it reads the real ones;
- `depth-anything-v2-small/` a Depth-Anything depth estimator with its image processor;
- `manifest.json` in the production manifest form, with every file's sha256.

The VAE keeps SDXL's 8x spatial factor (four blocks) and the ControlNet's conditioning
embedding downsamples 8x too, so image and latent sizes relate as in production while a
256x256 generation stays well under a second on a CPU. Nothing is downloaded: the CLIP
tokenizers are byte-level vocabularies built in memory.
"""

from __future__ import annotations

import json
from pathlib import Path

from common.hashing import file_sha256

SEED = 1234
SOURCE_PREFIX = "hf://gpu-worker-images/tiny-controlnet-pyworker"

# Production layout (same relative paths as the packaged manifest).
BASE_DIR = "sdxl-base-1.0"
CONTROLNET_DIR = "controlnet-depth-sdxl-1.0-small"
VAE_DIR = "sdxl-vae-fp16-fix"
DEPTH_DIR = "depth-anything-v2-small"
LIGHTNING_LORA = "loras/sdxl_lightning_8step_lora.safetensors"
HYPER_LORA = "loras/Hyper-SDXL-8steps-CFG-lora.safetensors"
ERA_LORAS = {
    "wilderness": "loras/experimance_wilderness.safetensors",
    "pre_industrial": "loras/experimance_historical.safetensors",
    "future": "loras/experimance_future.safetensors",
    "drone": "loras/drone_photography_xl.safetensors",
}


def _byte_vocab() -> dict[str, int]:
    """GPT-2 style byte-to-unicode alphabet, each symbol alone and as a word end, then the specials."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}


def _tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=_byte_vocab(), merges=[], model_max_length=77)


# Like SDXL's CLIP-L (768) and OpenCLIP bigG (1280), the two text encoders differ in width;
# the UNet's cross-attention takes both (32 + 48) and the pooled bigG projection (48).
TEXT_WIDTHS = (32, 48)


def _text_config(vocab_size: int, width: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
        hidden_size=width, intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4,
        num_hidden_layers=2, vocab_size=vocab_size, hidden_act="gelu", projection_dim=width,
    )


def _unet_kwargs() -> dict:
    return dict(
        block_out_channels=(32, 64), layers_per_block=1, in_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=6 * 8 + TEXT_WIDTHS[1],
        cross_attention_dim=sum(TEXT_WIDTHS), norm_num_groups=32,
    )


def _components():
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(sample_size=32, out_channels=4, up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                **_unet_kwargs())
    controlnet = ControlNetModel(conditioning_embedding_out_channels=(8, 16, 16, 16), **_unet_kwargs())
    _unzero_controlnet(controlnet)
    vae = AutoencoderKL(
        block_out_channels=[8, 16, 16, 16], in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        norm_num_groups=8, layers_per_block=1, sample_size=128, scaling_factor=0.13025,
    )
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                       beta_schedule="scaled_linear", timestep_spacing="leading")
    tok = _tokenizer()
    text_encoder = CLIPTextModel(_text_config(len(tok), TEXT_WIDTHS[0]))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(len(tok), TEXT_WIDTHS[1]))
    return dict(unet=unet, controlnet=controlnet, vae=vae, scheduler=scheduler, tokenizer=tok,
                tokenizer_2=_tokenizer(), text_encoder=text_encoder, text_encoder_2=text_encoder_2)


def _unzero_controlnet(controlnet) -> None:
    """A fresh ControlNet's output convolutions are zero (it starts as a no-op); give them random
    weights so the depth map visibly conditions the tiny model, as it does the trained one."""
    import torch

    zero_init = [controlnet.controlnet_cond_embedding.conv_out, *controlnet.controlnet_down_blocks,
                 controlnet.controlnet_mid_block]
    with torch.no_grad():
        for module in zero_init:
            for p in module.parameters():
                p.normal_(0.0, 0.2)


def _save_lora(unet, out: Path, rel: str, seed: int, scale: float) -> None:
    """A random LoRA on the UNet's attention projections (B is random too, so it changes the output)."""
    import copy

    import torch
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    model = copy.deepcopy(unet)
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                 target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.mul_(scale)
    target = out / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    StableDiffusionXLPipeline.save_lora_weights(
        target.parent, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(model)),
        weight_name=target.name,
    )


def _save_depth_model(out: Path) -> None:
    import torch
    from transformers import (
        DepthAnythingConfig,
        DepthAnythingForDepthEstimation,
        Dinov2Config,
        DPTImageProcessor,
    )

    torch.manual_seed(SEED + 7)
    config = DepthAnythingConfig(
        backbone_config=Dinov2Config(
            image_size=56, patch_size=14, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=32, out_features=["stage1", "stage2"], apply_layernorm=True,
            reshape_hidden_states=False,
        ),
        reassemble_hidden_size=16, patch_size=14, neck_hidden_sizes=[8, 16], reassemble_factors=[1, 0.5],
        fusion_hidden_size=8, head_hidden_size=8, depth_estimation_type="relative",
    )
    model = DepthAnythingForDepthEstimation(config).eval()
    processor = DPTImageProcessor(
        do_resize=True, size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
        do_rescale=True, do_normalize=True, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
        resample=3,
    )
    model.save_pretrained(out / DEPTH_DIR)
    processor.save_pretrained(out / DEPTH_DIR)


def _component(out: Path, kind: str, rel: str, **extra) -> dict:
    root = out / rel
    paths = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    files = []
    for p in paths:
        name = p.relative_to(root).as_posix() if root.is_dir() else ""
        files.append({"name": name, "source": f"{SOURCE_PREFIX}/{rel}{'/' + name if name else ''}",
                      "sha256": file_sha256(p), "size": p.stat().st_size})
    return {"kind": kind, "path": rel, **extra, "files": files}


def manifest(out: Path) -> dict:
    """The tiny manifest: the packaged one's variants and eras, pointing at the files just written."""
    from handlers.controlnet_pyworker.manifest import PACKAGED

    prod = json.loads(PACKAGED.read_text())
    components = {
        "sdxl-base": _component(out, "sdxl", BASE_DIR, variant="fp16"),
        "controlnet-depth": _component(out, "controlnet", CONTROLNET_DIR),
        "vae-fp16-fix": _component(out, "vae", VAE_DIR),
        "lora-lightning-8step": _component(out, "lora", LIGHTNING_LORA),
        "lora-hyper-8step-cfg": _component(out, "lora", HYPER_LORA),
        "depth-anything-v2-small": _component(out, "depth_estimator", DEPTH_DIR),
    }
    for era, rel in ERA_LORAS.items():
        components[f"lora-era-{era}"] = _component(out, "lora", rel)
    missing = {k for v in prod["variants"].values() for k in (v["base"], v["controlnet"], v.get("vae"))} - set(components)
    if missing - {None}:
        raise RuntimeError(f"tiny models lack production components {sorted(missing)}")
    return {
        "notes": ["tiny random-weight models for CPU tests (scripts/tiny_models/controlnet.py); "
                  "sources are placeholders, every file is already present"],
        "default_variant": prod["default_variant"],
        "variants": prod["variants"],
        "eras": prod["eras"],
        "depth_estimator": prod["depth_estimator"],
        "components": components,
    }


def build(out_dir: Path) -> Path:
    from diffusers import StableDiffusionXLPipeline

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    c = _components()
    controlnet, unet = c.pop("controlnet"), c["unet"]
    StableDiffusionXLPipeline(**c).save_pretrained(out / BASE_DIR, variant="fp16")
    controlnet.save_pretrained(out / CONTROLNET_DIR)
    c["vae"].save_pretrained(out / VAE_DIR)
    _save_lora(unet, out, LIGHTNING_LORA, SEED + 1, 0.5)
    _save_lora(unet, out, HYPER_LORA, SEED + 2, 0.5)
    for i, rel in enumerate(ERA_LORAS.values()):
        _save_lora(unet, out, rel, SEED + 10 + i, 1.0)
    _save_depth_model(out)
    (out / "manifest.json").write_text(json.dumps(manifest(out), indent=2) + "\n")
    return out
