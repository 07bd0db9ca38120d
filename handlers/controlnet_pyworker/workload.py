"""Workload units of a /generate request: the one number the response, the vast.ai front
(its `workload_calculator`) and the `/route/` cost all use.

One unit = one SDXL UNet evaluation on a 1024x1024 image. A request costs
    pixels/1024^2 x steps x variant cost x CFG (2 when cfg > 1: UNet and ControlNet run on
    a doubled batch) x ControlNet x LoRA x sampler order (dpm_sde: 2 evaluations per step)
    x num_images, plus a fixed cost for auto depth estimation.
So a default Lightning 1024x1024 request (6 steps, cfg 2, ControlNet) is 6 x 2 x 1.35 = 16.2.

Pure Python (no pydantic, no torch): it runs in the vast.ai front's own small venv.
Variant defaults come from the manifest when it can be read, else from the built-in table.
"""

from __future__ import annotations

import math

MEGAPIXEL = 1024 * 1024
CONTROLNET_FACTOR = 1.35      # a depth ControlNet adds part of a UNet encoder per evaluation
LORA_FACTOR = 1.05            # unfused era adapter: extra low-rank matmuls every step
SDE_ORDER = 2.0               # DPMSolverSDE evaluates the UNet twice per step
AUTO_DEPTH_UNITS = 0.5        # depth estimation on the input image
DEFAULTS = {"lightning": (6, 2.0, 1.0), "hyper": (8, 6.0, 1.0), "base": (25, 7.5, 1.0)}  # steps, cfg, cost
DEFAULT_VARIANT = "lightning"
FALLBACK = 100.0              # what vastai's Worker uses when a calculator fails


def _variant_table(m=None) -> tuple[str, dict[str, tuple[int, float, float]]]:
    try:
        if m is None:
            from handlers.controlnet_pyworker import manifest

            m = manifest.load()
        return m.default_variant, {n: (v.steps, v.cfg, v.cost) for n, v in m.variants.items()}
    except Exception:
        return DEFAULT_VARIANT, DEFAULTS


def _num(value, default: float) -> float:
    if value is None or isinstance(value, bool):
        return default
    out = float(value)
    if not math.isfinite(out) or out < 0:
        raise ValueError(f"not a usable number: {value!r}")
    return out


def cost(*, width: float, height: float, steps: float, cfg: float, variant_cost: float, num_images: float,
         era: bool, scheduler: str, auto_depth: bool) -> float:
    """Workload units of resolved values (the service's, after generating: what actually ran)."""
    w = width * height / MEGAPIXEL * steps * variant_cost * (2.0 if cfg > 1.0 else 1.0) * CONTROLNET_FACTOR
    w *= num_images
    if era:
        w *= LORA_FACTOR
    if scheduler == "dpm_sde":
        w *= SDE_ORDER
    if auto_depth:
        w += AUTO_DEPTH_UNITS
    return round(w, 3)


def units(payload: dict, manifest=None) -> float:
    """Workload units of a request body, its defaults resolved from the variant table (raises
    ValueError on values no request could carry). For the vast.ai front, before the request runs.

    `manifest` (a loaded `Manifest`) supplies variant defaults; else the one the environment names."""
    default_variant, table = _variant_table(manifest)
    variant = payload.get("model") or default_variant
    steps_d, cfg_d, variant_cost = table.get(variant, table.get(default_variant, DEFAULTS[DEFAULT_VARIANT]))
    return cost(width=_num(payload.get("width"), 1024), height=_num(payload.get("height"), 1024),
                steps=_num(payload.get("steps"), steps_d), cfg=_num(payload.get("cfg"), cfg_d),
                variant_cost=variant_cost, num_images=_num(payload.get("num_images"), 1),
                era=bool(payload.get("era")), scheduler=str(payload.get("scheduler")),
                auto_depth=bool(payload.get("auto_depth")))


def calculate(payload: dict) -> float:
    """`units()` for the vast.ai Worker: never raises (a malformed payload costs the fallback)."""
    try:
        return units(payload)
    except (TypeError, ValueError, AttributeError):
        return FALLBACK
