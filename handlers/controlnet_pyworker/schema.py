"""The /generate request (also the RunPod job input), validated before any model work.

`validate(raw, manifest)` returns a `GenerateRequest` or raises `JobError("invalid_input")`
with one `field: reason` line per problem; the server turns that into a 422. The model server
validates before it queues the request and hands the result on; the RunPod handler's
`service.execute` validates the job input. Either way, once.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from common.jobs import JobError, parse_input
from common.uploads.spec import UploadSpec
from handlers.controlnet_pyworker.manifest import Manifest
from handlers.controlnet_pyworker.settings import Settings

MAX_PROMPT_CHARS = 2000
MAX_INPUT_PIXELS = 4096 * 4096
SIZE_MIN, SIZE_MAX = 256, 2048
MAX_NAME_CHARS = 64          # `model` and `era`: manifest names
MAX_JSON_DEPTH = 32          # the deepest request (output.s3.*) is 3 levels
MAX_DETAIL_CHARS = 200       # one problem line; a field name is user text
MAX_DETAILS = 20


def _check_image_b64(value: str | None, info: ValidationInfo) -> str | None:
    """Size cap (MAX_IMAGE_B64_BYTES, from the validation context), base64 syntax, and an image
    header PIL can read (cheap: pixels are not decoded)."""
    if value is None:
        return None
    limit = (info.context or {}).get("max_image_b64_bytes", Settings.max_image_b64_bytes)
    if len(value) > limit:
        raise ValueError(f"{len(value)} characters, more than the {limit} allowed (send a smaller image)")
    body = value.split(",", 1)[1] if value.startswith("data:") else value
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as img:
            width, height = img.size
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise ValueError("not a decodable image (PNG or JPEG expected)") from None
    if width * height > MAX_INPUT_PIXELS:
        raise ValueError(f"image is {width}x{height}, more than {MAX_INPUT_PIXELS} pixels")
    return body


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    prompt: str = Field(..., min_length=1, max_length=MAX_PROMPT_CHARS, description="what to generate")
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS, description="what to avoid")
    depth_map_b64: str | None = Field(None, description="PNG/JPEG depth map (near = bright), gray or RGB")
    mock_depth: bool = Field(False, description="use a deterministic synthetic depth gradient")
    auto_depth: bool = Field(False, description="estimate depth from image_b64 with the manifest's depth model")
    image_b64: str | None = Field(None, description="source image for auto_depth")
    model: str | None = Field(None, max_length=MAX_NAME_CHARS,
                              description="variant: lightning, hyper, base (default: the manifest's)")
    era: str | None = Field(None, max_length=MAX_NAME_CHARS,
                            description="era LoRA: wilderness, pre_industrial, future, drone (manifest)")
    steps: int | None = Field(None, ge=1, le=100, description="denoising steps (default: the variant's)")
    cfg: float | None = Field(None, ge=0.0, le=30.0, description="guidance scale (default: the variant's)")
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="seed of the first image (default: random)")
    lora_strength: float | None = Field(None, ge=0.0, le=2.0, description="era LoRA weight (default: the era's)")
    controlnet_strength: float = Field(0.8, ge=0.0, le=2.0, description="ControlNet conditioning scale")
    scheduler: Literal["auto", "euler", "dpm_sde"] = Field("auto", description="auto: the variant's scheduler")
    width: int = Field(1024, description="multiple of 64, 256-2048")
    height: int = Field(1024, description="multiple of 64, 256-2048")
    num_images: int = Field(1, ge=1, le=4, description="images per request (seeds seed, seed+1, ...)")
    output: UploadSpec | None = Field(None, description="upload the images and return a link instead of base64")

    @field_validator("width", "height")
    @classmethod
    def _size(cls, v: int) -> int:
        if v % 64 or not SIZE_MIN <= v <= SIZE_MAX:
            raise ValueError(f"must be a multiple of 64 between {SIZE_MIN} and {SIZE_MAX}")
        return v

    @field_validator("depth_map_b64", "image_b64")
    @classmethod
    def _image(cls, v: str | None, info: ValidationInfo) -> str | None:
        return _check_image_b64(v, info)

    @model_validator(mode="after")
    def _one_depth_source(self) -> GenerateRequest:
        given = [n for n, on in (("depth_map_b64", self.depth_map_b64 is not None), ("mock_depth", self.mock_depth),
                                 ("auto_depth", self.auto_depth)) if on]
        if len(given) > 1:
            raise ValueError(f"give one depth source, not {' and '.join(given)}")
        if not given:
            raise ValueError("a depth source is required: depth_map_b64, mock_depth: true, or auto_depth "
                             "with image_b64")
        if self.auto_depth and self.image_b64 is None:
            raise ValueError("auto_depth needs image_b64")
        if self.image_b64 is not None and not self.auto_depth:
            raise ValueError("image_b64 is only used with auto_depth: true")
        return self


def shown(value: str, limit: int = MAX_NAME_CHARS) -> str:
    """A user-given string as an error may quote it: cut to `limit` characters."""
    return value if len(value) <= limit else value[:limit] + "..."


def bounded(problems: list[str]) -> list[str]:
    """At most MAX_DETAILS lines of at most MAX_DETAIL_CHARS each (field names are user text)."""
    out = [shown(p, MAX_DETAIL_CHARS) for p in problems[:MAX_DETAILS]]
    if len(problems) > MAX_DETAILS:
        out.append(f"... and {len(problems) - MAX_DETAILS} more problems")
    return out


def json_depth(value: object) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), without recursion: a hostile body can nest
    thousands of levels deep. Stops counting past MAX_JSON_DEPTH."""
    depth, level = 0, [value] if isinstance(value, (dict, list)) else []
    while level and depth <= MAX_JSON_DEPTH:
        depth += 1
        children: list = []
        for v in level:
            children.extend(v.values() if isinstance(v, dict) else v)
        level = [v for v in children if isinstance(v, (dict, list))]
    return depth


def validate(raw: object, manifest: Manifest, settings: Settings | None = None) -> GenerateRequest:
    """Pydantic validation plus the names the manifest defines (variant, era, depth model),
    all problems reported together; `settings` (default: the environment's) gives the image size limit."""
    settings = settings or Settings.from_env()
    problems: list[str] = []
    req = None
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise JobError("invalid_input", f"input: nested deeper than {MAX_JSON_DEPTH} levels",
                       [f"input: nested deeper than {MAX_JSON_DEPTH} levels"])
    try:
        req = parse_input(GenerateRequest, raw, {"max_image_b64_bytes": settings.max_image_b64_bytes})
    except JobError as exc:
        if not isinstance(raw, dict):
            raise
        problems = list(exc.details)
    model, era = raw.get("model"), raw.get("era")
    if isinstance(model, str) and len(model) <= MAX_NAME_CHARS and model not in manifest.variants:
        problems.append(f"model: unknown variant '{model}' (known: {', '.join(manifest.variants)})")
    if isinstance(era, str) and len(era) <= MAX_NAME_CHARS and era not in manifest.eras:
        problems.append(f"era: unknown era '{era}' (known: {', '.join(manifest.eras) or 'none'})")
    if raw.get("auto_depth") is True and not manifest.depth_estimator:
        problems.append("auto_depth: this worker's manifest has no depth estimator")
    if req is not None and req.output is not None:
        from common.uploads import check  # a method without its settings fails now, not after generating

        try:
            check(req.output)
        except JobError as exc:
            problems.extend(exc.details or [exc.message])
    if problems or req is None:
        problems = bounded(problems)
        raise JobError("invalid_input", "; ".join(problems), problems)
    return req
