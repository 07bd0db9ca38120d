"""The stages before the configs: download and extract the dataset, then caption what has no caption."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from common.jobs import Progress, to_thread_stoppable
from handlers.diffusion_pipe_trainer import captions, dataset, model_fetch, settings
from handlers.diffusion_pipe_trainer.models import JOYCAPTION_DIR, JOYCAPTION_REPO, Fetch
from handlers.diffusion_pipe_trainer.schema import TrainRequest
from handlers.diffusion_pipe_trainer.workspace import JobDirs


def hf_token(req: TrainRequest) -> str | None:
    """The job's Hugging Face token, else the worker's (`HF_TOKEN`)."""
    return req.api_keys.huggingface_token or settings.current().secret("hf_token")


async def prepare_dataset(req: TrainRequest, dirs: JobDirs, progress: Progress) -> dict[str, dataset.MediaSet]:
    ds = req.dataset
    assert ds is not None
    sets: dict[str, dataset.MediaSet] = {}
    for kind in ds.kinds():
        url = ds.images_url if kind == "images" else ds.videos_url
        progress.update("downloading", 0, f"downloading {kind}", force=True)

        def on_bytes(done: int = 0, total: int | None = None, *_a: Any, _kind: str = kind, **_k: Any) -> None:
            pct = 100.0 * done / total if total else None
            progress.update("downloading", pct, f"{_kind}: {done / 1e6:.1f} MB")

        # on a cancel or the time limit, the download ends at its next chunk instead of going on
        sets[kind] = await to_thread_stoppable(
            dataset.prepare, url, kind, dirs.downloads, dirs.images if kind == "images" else dirs.videos,
            precaptioned=ds.type == "precaptioned", sha256=(ds.sha256 or {}).get(kind), progress=on_bytes,
            hf_token=hf_token(req),
        )
    return sets


async def caption(req: TrainRequest, sets: dict[str, dataset.MediaSet], dirs: JobDirs,
                   progress: Progress) -> dict[str, int]:
    ds = req.dataset
    assert ds is not None
    trigger = ds.trigger_word
    todo = {kind: (list(m.media) if req.caption.overwrite and ds.type != "precaptioned" else list(m.uncaptioned))
            for kind, m in sets.items()}
    if ds.type == "precaptioned":
        todo = {kind: [] for kind in sets}
    kept = {kind: [p for p in sets[kind].media if p not in set(todo[kind])] for kind in sets}
    stats = {"captioned_images": 0, "captioned_videos": 0,
             "kept_captions": sum(len(v) for v in kept.values()),
             "trigger_added": sum(captions.add_trigger_to_existing(v, trigger) for v in kept.values())}
    total = sum(len(v) for v in todo.values())
    done = 0

    def on_caption(path: Path, _caption: str) -> None:
        nonlocal done
        done += 1
        progress.update("captioning", 100.0 * done / total, f"captioned {done}/{total}: {path.name}",
                        file=path.name, done=done, total=total)

    if todo.get("images"):
        progress.update("captioning", 0, f"captioning {len(todo['images'])} images with JoyCaption", force=True)
        model_dir = await asyncio.to_thread(model_fetch.ensure, dirs.models,
                                            Fetch(JOYCAPTION_REPO, JOYCAPTION_DIR, required=("config.json",)),
                                            token=hf_token(req))
        await captions.caption_images(
            model_dir, todo["images"], prompt=_image_prompt(req), trigger=trigger,
            max_new_tokens=req.caption.max_new_tokens, on_caption=on_caption, log_file=dirs.logs / "joycaption.log",
        )
        stats["captioned_images"] = len(todo["images"])
    if todo.get("videos"):
        progress.update("captioning", 100.0 * done / total, f"captioning {len(todo['videos'])} videos with Gemini",
                        force=True)
        key = req.api_keys.gemini_api_key or settings.current().secret("gemini_api_key")
        # on a cancel or the time limit, the thread stops at its next poll instead of captioning on
        await to_thread_stoppable(captions.caption_videos, todo["videos"], api_key=key, model=req.caption.gemini_model,
                                  prompt=req.caption.video_prompt, trigger=trigger, on_caption=on_caption)
        stats["captioned_videos"] = len(todo["videos"])
    return stats


def _image_prompt(req: TrainRequest) -> str:
    from handlers.diffusion_pipe_trainer.joycaption import build_prompt

    return build_prompt(req.caption.prompt, req.dataset.trigger_word if req.dataset else None)
