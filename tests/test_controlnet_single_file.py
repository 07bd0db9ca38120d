"""A base checkpoint given as one single file (the original SDXL/LDM key layout, as Civitai and
Juggernaut-style checkpoints ship) loads through the manifest's `sdxl_single_file` kind and
generates exactly what the same weights do as a diffusers folder."""

from __future__ import annotations

import json
import re

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from handlers.controlnet_pyworker import manifest as manifest_mod
from handlers.controlnet_pyworker.engine import Engine
from tests.controlnet_fixtures import body
from tests.test_controlnet_engine import pixels, run

RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
          ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]
TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
       "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
       "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}


def _resnet(rest: str) -> str:
    for new, old in RESNET:
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def unet_to_ldm(sd: dict, config: dict) -> dict:
    """The original (LDM) UNet key layout: input_blocks / middle_block / output_blocks."""
    per = config["layers_per_block"] + 1
    up_has_attn = ["CrossAttn" in t for t in config["up_block_types"]]
    out = {}
    for key, value in sd.items():
        head, _, param = key.rpartition(".")
        if head in TOP:
            name = f"{TOP[head]}.{param}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            b, kind, i, rest = int(m[1]), m[2], int(m[3]), m[4]
            idx = 1 + b * per + i
            name = f"input_blocks.{idx}.0.{_resnet(rest)}" if kind == "resnets" else f"input_blocks.{idx}.1.{rest}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            name = f"input_blocks.{1 + int(m[1]) * per + per - 1}.0.op.{m[2]}"
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            name = f"middle_block.{0 if m[1] == '0' else 2}.{_resnet(m[2])}"
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            name = f"middle_block.1.{m[1]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            b, kind, i, rest = int(m[1]), m[2], int(m[3]), m[4]
            idx = b * per + i
            name = f"output_blocks.{idx}.0.{_resnet(rest)}" if kind == "resnets" else f"output_blocks.{idx}.1.{rest}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            b = int(m[1])
            name = f"output_blocks.{b * per + per - 1}.{2 if up_has_attn[b] else 1}.conv.{m[2]}"
        else:
            raise AssertionError(f"unmapped UNet key {key}")
        out["model.diffusion_model." + name] = value
    return out


def open_clip_to_ldm(sd: dict) -> dict:
    """text_encoder_2 in OpenCLIP's layout (fused q/k/v, transposed projection)."""
    prefix, out = "conditioner.embedders.1.model.", {}
    fixed = {"text_model.embeddings.position_embedding.weight": "positional_embedding",
             "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
             "text_model.final_layer_norm.weight": "ln_final.weight",
             "text_model.final_layer_norm.bias": "ln_final.bias"}
    for key, value in sd.items():
        if key in fixed:
            out[prefix + fixed[key]] = value
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
        elif m := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)", key):
            i, p = m[1], m[2]
            parts = [sd[f"text_model.encoder.layers.{i}.self_attn.{x}_proj.{p}"] for x in "qkv"]
            out[f"{prefix}transformer.resblocks.{i}.attn.in_proj_{p}"] = torch.cat(parts)
        elif re.fullmatch(r"text_model\.encoder\.layers\.\d+\.self_attn\.[kv]_proj\.(weight|bias)", key):
            continue
        elif key.startswith("text_model.encoder.layers."):
            name = (key.replace("text_model.encoder.layers.", "resblocks.").replace(".self_attn.", ".attn.")
                    .replace("layer_norm1", "ln_1").replace("layer_norm2", "ln_2")
                    .replace(".fc1.", ".c_fc.").replace(".fc2.", ".c_proj."))
            out[prefix + "transformer." + name] = value
        elif key.endswith("position_ids"):
            continue
        else:
            raise AssertionError(f"unmapped text_encoder_2 key {key}")
    return out


def test_single_file_checkpoint_matches_the_diffusers_folder(cn_models, tmp_path):
    base = cn_models / "sdxl-base-1.0"
    unet_cfg = json.loads((base / "unet" / "config.json").read_text())
    ckpt = unet_to_ldm(load_file(base / "unet" / "diffusion_pytorch_model.fp16.safetensors"), unet_cfg)
    ckpt.update({"conditioner.embedders.0.transformer.text_model." + k.removeprefix("text_model."): v
                 for k, v in load_file(base / "text_encoder" / "model.fp16.safetensors").items()})
    ckpt.update(open_clip_to_ldm(load_file(base / "text_encoder_2" / "model.fp16.safetensors")))
    models = tmp_path / "models"
    models.mkdir()
    for entry in cn_models.iterdir():
        if entry.name != "manifest.json":
            (models / entry.name).symlink_to(entry)
    (models / "checkpoints").mkdir()
    save_file(ckpt, models / "checkpoints" / "tiny_sdxl_single.safetensors")

    data = json.loads((cn_models / "manifest.json").read_text())
    data["components"]["sdxl-single"] = {
        "kind": "sdxl_single_file", "path": "checkpoints/tiny_sdxl_single.safetensors", "config": "sdxl-base",
        "files": [{"name": "", "source": "https://example.invalid/tiny_sdxl_single.safetensors", "sha256": None}]}
    data["variants"]["single"] = dict(data["variants"]["base"], base="sdxl-single")
    (models / "manifest.json").write_text(json.dumps(data))
    m = manifest_mod.load(models / "manifest.json")
    assert [c.key for c in m.components_for("single", eras=False)][:3] == ["sdxl-single", "controlnet-depth",
                                                                           "sdxl-base"]

    eng = Engine(m, models, device="cpu", max_loaded=2, fetch_missing=False)
    single = run(eng, **dict(body(), model="single", steps=3))
    folder = run(eng, **dict(body(), model="base", steps=3))
    assert single.variant == "single"
    assert np.array_equal(pixels(single), pixels(folder)), "same weights, same image"
    one, two = eng.get("single").pipe, eng.get("base").pipe
    for part in ("unet", "text_encoder", "text_encoder_2"):
        a, b = getattr(one, part).state_dict(), getattr(two, part).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b), part
