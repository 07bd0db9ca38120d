"""One /generate request from validated input to the response, shared by the model server and
the RunPod handler: generate, then return base64 PNGs or upload them per the `output` spec.

Images are added to the response after `common.jobs.finish()` has redacted it: base64 is not
a secret, and scanning megabytes of it with the secret patterns costs time and could, by
chance, mask a run of characters inside an image.
"""

from __future__ import annotations

import base64
import io
import tempfile
import threading
from pathlib import Path

from common.jobs import JobError, Progress, Timings, run_job
from common.volumes import safe_job_id, volume_root
from handlers.controlnet_pyworker import schema, workload
from handlers.controlnet_pyworker.engine import Engine, Generation, Ticket


def png_bytes(image, level: int = 1) -> bytes:
    """PNG at zlib `level` (PNG_COMPRESS_LEVEL, 1): at 1024x1024 about 40 ms faster than PIL's
    default 6 for ~8% more bytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def _describe(gen: Generation, variant_cost: float) -> dict:
    units = workload.cost(width=gen.width, height=gen.height, steps=gen.steps, cfg=gen.cfg, variant_cost=variant_cost,
                          num_images=len(gen.seeds), era=gen.era is not None, scheduler=gen.scheduler,
                          auto_depth=gen.depth_source == "auto_depth")
    return {
        "seed": gen.seeds[0], "seeds": gen.seeds, "model": gen.variant, "era": gen.era, "steps": gen.steps,
        "cfg": gen.cfg, "scheduler": gen.scheduler, "lora_strength": gen.lora_strength,
        "controlnet_strength": gen.controlnet_strength, "width": gen.width, "height": gen.height,
        "depth_source": gen.depth_source, "workload": units,
    }


def _upload(pngs: list[bytes], req: schema.GenerateRequest, job_id: str, progress: Progress | None,
            vol: Path | None) -> dict:
    from common.uploads import upload

    root = (vol / "controlnet-outputs" / job_id) if vol else Path(tempfile.mkdtemp(prefix=f"cn-{job_id}-"))
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for i, data in enumerate(pngs):
        path = root / f"{job_id}_{i}.png"
        path.write_bytes(data)
        files.append(path)
    return upload(files, req.output, job_id=job_id, volume_dir=vol, progress=progress,
                  zip_name=f"{job_id}.zip" if len(files) > 1 else None)


def execute(engine: Engine, raw: dict, *, job: dict, timings: Timings, max_inline_bytes: int | None = None,
            progress: Progress | None = None, ticket: Ticket | None = None, stop: threading.Event | None = None,
            request: schema.GenerateRequest | None = None) -> tuple[dict, list[str]]:
    """Validate, generate, deliver: (response without images, base64 images), or raises.

    `request` is `raw` already validated (the server validates before it queues); without it,
    `raw` is validated here. `ticket` is a place already taken in the engine's queue (the server
    admits before it hands the request to a thread); without one, a place is taken here.
    `max_inline_bytes` refuses base64 results above it unless an `output` spec is given. `stop`
    cancels the generation.
    """
    try:
        req = request or schema.validate(raw, engine.manifest, engine.settings)
        job_id = safe_job_id(job.get("id"))

        def on_step(i: int, total: int) -> None:
            if progress:
                progress.update("denoising", 100.0 * i / total, f"step {i}/{total}", step=i, steps=total)

        if progress:
            progress.update("queued", 0.0, "waiting for the device")
        with ticket or engine.queue.admit():
            with timings.stage("generate"):
                gen = engine.generate(req, on_step=on_step, stop=stop)
    finally:
        if ticket:
            ticket.release()
    for k, v in gen.timings.items():
        timings.add(k, v)
    with timings.stage("encode"):
        pngs = [png_bytes(img, engine.settings.png_compress_level) for img in gen.images]
    result = _describe(gen, engine.manifest.variants[gen.variant].cost)
    if req.output is not None:
        if progress:
            progress.update("uploading", 100.0, f"uploading {len(pngs)} image(s)", force=True)
        with timings.stage("upload"):
            result["upload"] = _upload(pngs, req, job_id, progress, volume_root(engine.settings.volume_dir))
        return result, []
    images = [base64.b64encode(p).decode("ascii") for p in pngs]
    size = sum(len(s) for s in images)
    if max_inline_bytes is not None and size > max_inline_bytes:
        raise JobError("invalid_input", f"output: the result is {size / 1e6:.1f} MB of base64, more than the "
                       f"{max_inline_bytes / 1e6:.1f} MB a RunPod response can carry; give an `output` upload "
                       "spec (s3, huggingface, presigned_put, ...) to receive a link instead",
                       ["output: required for results this large"])
    return result, images


def respond(job: dict, engine: Engine, **kwargs) -> dict:
    """`execute` under `common.jobs.run_job` (secrets registered, timings, errors as the error
    result), with the images added after redaction."""
    images: list[str] = []

    def body(job: dict, timings: Timings) -> dict:
        result, imgs = execute(engine, job.get("input"), job=job, timings=timings, **kwargs)
        images.extend(imgs)
        return result

    out = run_job(job, body)
    if images and "error" not in out:
        out["images"] = images
        out["format"] = "png"
    return out
