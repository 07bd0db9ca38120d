"""Depth conditioning images: decoded from base64, synthetic (mock), or estimated (auto).

All three return an RGB PIL image at the output size with near = bright, as the SDXL depth
ControlNets were trained on.
"""

from __future__ import annotations

import base64
import binascii
import io

from common.jobs import JobError
from handlers.controlnet_pyworker.schema import MAX_INPUT_PIXELS


def decode_image(b64: str, field: str):
    """A PIL image from base64 (PNG/JPEG/...), refusing undecodable or huge images."""
    from PIL import Image, UnidentifiedImageError

    try:
        raw = base64.b64decode(b64, validate=True)
        img = Image.open(io.BytesIO(raw))
        if img.width * img.height > MAX_INPUT_PIXELS:
            raise JobError("invalid_input", f"{field}: image is {img.width}x{img.height}, more than "
                           f"{MAX_INPUT_PIXELS} pixels", [f"{field}: image too large"])
        img.load()
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise JobError("invalid_input", f"{field}: not a decodable image ({type(exc).__name__})",
                       [f"{field}: not a decodable image"]) from None
    return img


def _normalized_rgb(gray, width: int, height: int):
    """Stretch a grayscale image to the full 0..255 range and resize it to the output size."""
    import numpy as np
    from PIL import Image

    arr = np.asarray(gray.convert("F"), dtype=np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    if hi - lo > 1e-6:
        arr = (arr - lo) / (hi - lo) * 255.0
    img = Image.fromarray(arr.clip(0, 255).astype(np.uint8), mode="L")
    if img.size != (width, height):
        img = img.resize((width, height), Image.BICUBIC)
    return img.convert("RGB")


def from_b64(b64: str, width: int, height: int):
    img = decode_image(b64, "depth_map_b64")
    return _normalized_rgb(img.convert("L"), width, height)


def mock(width: int, height: int):
    """A deterministic synthetic scene: ground plane getting nearer towards the bottom, plus a round hill."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    ground = y / max(height - 1, 1)
    cx, cy, r = width * 0.6, height * 0.55, min(width, height) * 0.25
    hill = np.clip(1.0 - ((x - cx) ** 2 + (y - cy) ** 2) / (r * r), 0.0, 1.0) * 0.6
    depth = np.clip(0.15 + 0.7 * ground + hill, 0.0, 1.0)
    return Image.fromarray((depth * 255).astype(np.uint8), mode="L").convert("RGB")


class DepthEstimator:
    """A transformers depth-estimation pipeline, loaded once from a local folder."""

    def __init__(self, path: str, device: str) -> None:
        from transformers import pipeline

        self.pipe = pipeline("depth-estimation", model=path, device=device)

    def __call__(self, image_b64: str, width: int, height: int):
        img = decode_image(image_b64, "image_b64").convert("RGB")
        depth = self.pipe(img)["depth"]
        return _normalized_rgb(depth, width, height)
