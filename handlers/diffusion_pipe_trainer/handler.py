"""RunPod handler: LoRA training with diffusion-pipe (seed 002).

validate -> download + extract dataset -> caption -> write configs -> [dry_run stops here]
-> fetch model weights -> train (child process group) -> upload the latest epoch's LoRA.

The handler is async so that a RunPod cancel or timeout reaches it as CancelledError,
which ends the training process group before the cancellation goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.jobs import JobError, Progress, Timings, error_result, run_job_async, to_thread_stoppable
from common.redaction import redact
from handlers.diffusion_pipe_trainer import buckets, captions, configs, dataset, gpus, model_fetch, training
from handlers.diffusion_pipe_trainer.models import JOYCAPTION_DIR, JOYCAPTION_REPO, REGISTRY, Fetch, ModelSpec
from handlers.diffusion_pipe_trainer.outputs import clear_interrupted_saves, latest_lora
from handlers.diffusion_pipe_trainer.schema import TrainRequest, parse_request
from handlers.diffusion_pipe_trainer.train_log import TrainProgress
from handlers.diffusion_pipe_trainer.workspace import JobDirs, job_dirs

log = logging.getLogger("trainer")
REQUEST_FILE = "request.json"


def _progress_interval() -> float:
    return float(os.environ.get("TRAINER_PROGRESS_INTERVAL_S", "10"))


DEFAULT_TIMEOUT_S = 24 * 3600  # RunPod's job TTL; no job holds a GPU longer unless it asks (timeout_s)


def _timeout(req: TrainRequest) -> float:
    """The job's time limit: its own `timeout_s`, else the worker's TRAINING_TIMEOUT_S, else 24 h."""
    return req.timeout_s or float(os.environ.get("TRAINING_TIMEOUT_S") or DEFAULT_TIMEOUT_S)


def _hf_token(req: TrainRequest) -> str | None:
    return req.api_keys.huggingface_token or os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")


# ---------------------------------------------------------------- dataset + captions


async def _prepare_dataset(req: TrainRequest, dirs: JobDirs, progress: Progress) -> dict[str, dataset.MediaSet]:
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
            hf_token=_hf_token(req),
        )
    return sets


async def _caption(req: TrainRequest, sets: dict[str, dataset.MediaSet], dirs: JobDirs,
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
                                            token=_hf_token(req))
        await captions.caption_images(
            model_dir, todo["images"], prompt=_image_prompt(req), trigger=trigger,
            max_new_tokens=req.caption.max_new_tokens, on_caption=on_caption, log_file=dirs.logs / "joycaption.log",
        )
        stats["captioned_images"] = len(todo["images"])
    if todo.get("videos"):
        progress.update("captioning", 100.0 * done / total, f"captioning {len(todo['videos'])} videos with Gemini",
                        force=True)
        key = req.api_keys.gemini_api_key or os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY")
        # on a cancel or the time limit, the thread stops at its next poll instead of captioning on
        await to_thread_stoppable(captions.caption_videos, todo["videos"], api_key=key, model=req.caption.gemini_model,
                                  prompt=req.caption.video_prompt, trigger=trigger, on_caption=on_caption)
        stats["captioned_videos"] = len(todo["videos"])
    return stats


def _image_prompt(req: TrainRequest) -> str:
    from handlers.diffusion_pipe_trainer.joycaption import build_prompt

    return build_prompt(req.caption.prompt, req.dataset.trigger_word if req.dataset else None)


# ---------------------------------------------------------------- resume


def _earlier_job(req: TrainRequest, root: Path) -> tuple[JobDirs, dict]:
    earlier = job_dirs(req.resume or "", root)
    saved = earlier.config / REQUEST_FILE
    if not saved.is_file():
        raise JobError("invalid_input", f"resume: no job '{req.resume}' on this volume ({earlier.job} not found)")
    info = json.loads(saved.read_text())
    if info.get("model_type") != req.model_type:
        raise JobError("invalid_input", f"resume: job '{req.resume}' trained {info.get('model_type')}, "
                                        f"not {req.model_type}")
    if not any(earlier.outputs.glob("*/latest")):
        raise JobError("invalid_input", f"resume: job '{req.resume}' has no checkpoint to resume from "
                                        "(checkpoints are written every checkpoint_every_n_minutes/epochs)")
    return earlier, info


# ---------------------------------------------------------------- GPUs, engine, RAM


@dataclass(frozen=True)
class _Gpus:
    ids: list[int]
    data_parallel: int  # GPUs / pipeline_stages: the ranks that each take a share of every global batch


def _gpus(req: TrainRequest) -> _Gpus:
    ids = gpus.visible_gpu_ids()
    stages = req.training.passthrough().get("pipeline_stages", 1)
    if len(ids) % stages:
        # DeepSpeed asserts world_size % num_stages == 0 (deepspeed/runtime/pipe/module.py:175 at v0.18.4)
        raise JobError("invalid_input", f"training.pipeline_stages: {stages} does not divide the {len(ids)} GPU(s) "
                                        "of this worker")
    return _Gpus(ids, len(ids) // stages)


def _engine_problems(spec: ModelSpec) -> list[str]:
    """What would make this job fail in the engine after the model download: no engine, or no flash-attn for Wan
    (the engine runs on this same Python: the launcher starts `sys.executable -u train.py`)."""
    problems = []
    if not (training.engine_dir() / "train.py").is_file():
        problems.append(f"diffusion-pipe not found: {training.engine_dir()}/train.py is missing (DIFFUSION_PIPE_DIR)")
    elif spec.needs_flash_attn and (why := gpus.flash_attn_error(sys.executable)):
        problems.append(f"flash-attn is not importable in the engine's Python ({why}), and diffusion-pipe's Wan "
                        "asserts it (models/wan/attention.py:107): the image needs flash-attn 2")
    return problems


def _preflight(req: TrainRequest, spec: ModelSpec, gpu: _Gpus) -> None:
    """Refuse, before any download, a job this worker cannot train."""
    if problems := _engine_problems(spec):
        raise JobError("engine_failed", "; ".join(problems))
    gpus.check_ram(spec.model_name, spec.host_ram_gb, len(gpu.ids))


# ---------------------------------------------------------------- the job


async def _body(job: dict, timings: Timings) -> dict:
    started = time.monotonic()
    with timings.stage("validate"):
        req = parse_request(job.get("input"))
        if not req.dry_run:
            from common.uploads import check  # a method without its settings fails now, not after training

            check(req.output)
    spec: ModelSpec = REGISTRY[req.model_type]
    gpu = _gpus(req)
    if not req.dry_run:
        await asyncio.to_thread(_preflight, req, spec, gpu)
    dirs = job_dirs(str(job.get("id") or "local_test"))
    hub = await asyncio.to_thread(_start_hub_updates, req, dirs.job_id)
    dirs.create()
    progress = Progress(job, min_interval=_progress_interval(), sinks=[hub] if hub else None)
    try:
        result = await _train(req, spec, gpu, dirs, progress, timings, started)
    except BaseException as exc:
        progress.close()
        if hub:
            err = error_result(exc) if isinstance(exc, Exception) else {"error": "cancelled: the job was cancelled"}
            await asyncio.to_thread(hub.finish, {"status": "failed", **err})
        raise
    progress.close()
    if hub:
        await asyncio.to_thread(hub.finish, {"status": result["status"], "output": result.get("output")})
    return result


def _start_hub_updates(req: TrainRequest, job_id: str):
    """UPDATES/ progress when the output goes to the Hub (method huggingface, or auto with a token)."""
    out = req.output
    if out is None or req.dry_run or out.method not in ("huggingface", "auto"):
        return None
    token = (out.huggingface.token if out.huggingface else None) or os.environ.get("HF_TOKEN")
    if not token:
        return None
    from huggingface_hub.errors import HfHubHTTPError

    from handlers.diffusion_pipe_trainer.hub_updates import HubUpdates, resolve_repo_id

    hf = out.huggingface
    try:
        repo_id = resolve_repo_id(token, hf.repo_id if hf else None, job_id, req.model_type)
        hub = HubUpdates(token, repo_id, job_id, private=hf.private if hf else True)
        hub.start()
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if out.method == "huggingface" and status in (401, 403):
            # found out now rather than after hours of training
            raise JobError("invalid_input", f"output.huggingface.token: the Hub refused it ({status}); "
                                            "it needs write access") from None
        log.warning("UPDATES/ disabled: %s", exc)
        return None
    except Exception as exc:  # progress on the Hub is a convenience; the upload reports real failures
        log.warning("UPDATES/ disabled: %s", exc)
        return None
    if hf is None:
        from common.uploads.spec import HuggingFaceSpec

        out.huggingface = HuggingFaceSpec(token=token, repo_id=repo_id)
    else:
        hf.repo_id = repo_id  # the upload goes to the same repo as the updates
    return hub


@dataclass
class _Plan:
    """What the stages before training produced: configs on the volume and the dataset's numbers."""

    cfg_path: Path
    output_dir: Path
    texts: dict[str, str]
    buckets: buckets.Plan
    dataset_info: dict[str, Any]
    warnings: list[str]


def _media_dirs(ds_cfg: dict[str, Any]) -> list[buckets.Directory]:
    """The files of each [[directory]] the engine will scan (flat; media with a caption file, as it pairs them)."""
    out = []
    for d in ds_cfg["directory"]:
        folder = Path(d["path"])
        kind = "videos" if folder.name == "videos" else "images"
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in dataset.KIND_EXTS[kind]
                       and p.with_suffix(".txt").is_file())
        out.append(buckets.Directory(buckets.media_of(files, kind), d["num_repeats"], folder))
    return out


async def _plan(req: TrainRequest, spec: ModelSpec, gpu: _Gpus, dirs: JobDirs, progress: Progress,
                timings: Timings) -> _Plan:
    summary: dict[str, Any] = {}
    warnings: list[str] = []
    if req.resume:
        earlier, info = _earlier_job(req, dirs.root)
        data_dirs = configs.DatasetDirs(
            images=earlier.images if any(earlier.images.iterdir()) else None,
            videos=earlier.videos if any(earlier.videos.iterdir()) else None,
            image_repeats=info["image_repeats"], video_repeats=info["video_repeats"],
        )
        counts = {k: int(info.get("counts", {}).get(k, 0)) for k in ("images", "videos")}
        output_dir = earlier.outputs
        summary["resumed_from"] = req.resume
        if removed := clear_interrupted_saves(output_dir):
            warnings.append(f"removed half-written saves a kill left behind (the engine would crash on them): "
                            f"{', '.join(removed)}")
    else:
        with timings.stage("download"):
            sets = await _prepare_dataset(req, dirs, progress)
            if "videos" in sets and spec.frame_buckets is not None:
                frame_buckets = list(req.training.frame_buckets or spec.frame_buckets)
                warnings += await asyncio.to_thread(dataset.check_video_lengths, sets["videos"], frame_buckets)
        with timings.stage("caption"):
            summary.update(await _caption(req, sets, dirs, progress))
        ds = req.dataset
        data_dirs = configs.DatasetDirs(
            images=dirs.images if "images" in sets else None, videos=dirs.videos if "videos" in sets else None,
            image_repeats=ds.image_repeats, video_repeats=ds.video_repeats,
        )
        counts = {k: (sets[k].count if k in sets else 0) for k in ("images", "videos")}
        summary["ignored_files"] = sorted(f for m in sets.values() for f in m.ignored)[:50]
        output_dir = dirs.outputs

    with timings.stage("config"):
        progress.update("configs", None, "writing config.toml and dataset.toml", force=True)
        cfg_path = dirs.config / configs.CONFIG_NAME
        cfg = configs.build_config(spec, req.training, models_dir=dirs.models, output_dir=output_dir,
                                   dataset_toml=dirs.config / configs.DATASET_NAME)
        ds_cfg = configs.build_dataset(spec, req.training, data_dirs)
        texts = configs.write_configs(dirs.config, cfg, ds_cfg)
        (dirs.config / REQUEST_FILE).write_text(json.dumps(redact({
            "model_type": req.model_type, "counts": counts, "image_repeats": data_dirs.image_repeats,
            "video_repeats": data_dirs.video_repeats, "request": req.model_dump(mode="json"),
        }), indent=2))
        media = await asyncio.to_thread(_media_dirs, ds_cfg)
        plan = buckets.plan(ds_cfg, media, micro_batch=req.training.batch_size,
                            grad_accum=req.training.gradient_accumulation_steps, world_size=gpu.data_parallel,
                            image_micro_batch=cfg.get("image_micro_batch_size_per_gpu"))
        warnings += plan.warnings()
        if plan.steps_per_epoch == 0:
            raise JobError("invalid_input", "dataset: every bucket is smaller than the global batch "
                                            f"({req.training.batch_size} x {req.training.gradient_accumulation_steps} "
                                            f"x {gpu.data_parallel} GPU(s)), so the engine would train nothing; "
                                            "lower training.batch_size or gradient_accumulation_steps, or raise the "
                                            "repeats", warnings)
    dataset_info = {"images": counts["images"], "videos": counts["videos"], **summary,
                    "trigger_word": req.dataset.trigger_word if req.dataset else None}
    return _Plan(cfg_path, output_dir, texts, plan, dataset_info, warnings)


async def _fetch_models(req: TrainRequest, spec: ModelSpec, dirs: JobDirs, progress: Progress,
                        timings: Timings) -> None:
    with timings.stage("models"):
        token = _hf_token(req)
        for i, item in enumerate(spec.fetch):
            progress.update("fetching_models", 100.0 * i / len(spec.fetch), f"{item.repo_id}", force=True)
            await asyncio.to_thread(model_fetch.ensure, dirs.models, item, token=token)


def _dry_run_result(req: TrainRequest, spec: ModelSpec, gpu: _Gpus, dirs: JobDirs, plan: _Plan,
                    command: list[str]) -> dict:
    steps = plan.buckets.steps_per_epoch
    return {
        "configs": plan.texts, "config_dir": str(dirs.config), "dataset": plan.dataset_info,
        "model_paths": {f.repo_id: str(dirs.models / f.local_dir) for f in spec.fetch},
        "estimated_steps_per_epoch": steps,
        "estimated_total_steps": steps * req.training.epochs if not req.training.max_steps
        else min(steps * req.training.epochs, req.training.max_steps),
        "gpus": gpu.ids, "command": command,
        "warnings": plan.warnings + [f"a real job would be refused: {p}" for p in _engine_problems(spec)],
        "lora_file": spec.lora_file, "lora_format": spec.lora_format,
    }


async def _train(req: TrainRequest, spec: ModelSpec, gpu: _Gpus, dirs: JobDirs, progress: Progress,
                 timings: Timings, started: float) -> dict:
    base = {"job_id": dirs.job_id, "model_type": req.model_type, "model_name": spec.model_name}
    limit = _timeout(req)
    # the time limit covers everything up to the end of training; training enforces its share itself,
    # stopping the process group with the epoch and step it reached. The upload after it is not cut off.
    before_training = asyncio.timeout_at(started + limit)
    try:
        async with before_training:
            plan = await _plan(req, spec, gpu, dirs, progress, timings)
            if req.dry_run:
                command = training.command(plan.cfg_path, resume=bool(req.resume), gpu_ids=gpu.ids,
                                           master_port=training.free_port())
                return {"status": "dry_run", **base, **_dry_run_result(req, spec, gpu, dirs, plan, command)}
            await _fetch_models(req, spec, dirs, progress, timings)
    except TimeoutError:
        if not before_training.expired():
            raise
        raise JobError("timeout", f"timeout_s: the job's time limit of {limit:g} s ran out during "
                                  f"'{progress.stage}', before training started; nothing was trained") from None
    remaining = max(1.0, started + limit - time.monotonic())

    tp = TrainProgress(epochs=req.training.epochs, steps_per_epoch=plan.buckets.steps_per_epoch,
                       max_steps=req.training.max_steps)

    def on_update(p: TrainProgress) -> None:
        stage = "training" if p.phase == "training" else "caching"
        msg = (f"epoch {p.epoch}/{p.epochs} step {p.step}/{p.total_steps}" + (f" loss {p.loss:.4f}" if p.loss else "")
               if stage == "training" else "caching latents and text embeddings")
        progress.update(stage, p.percent() if stage == "training" else None, msg,
                        force=p.completed, **p.report())

    progress.update("training", 0, "starting diffusion-pipe", force=True)
    # the port is picked now, not before the (possibly long) model download, so that it is still free
    command = training.command(plan.cfg_path, resume=bool(req.resume), gpu_ids=gpu.ids,
                               master_port=training.free_port())
    with timings.stage("training"):
        await training.run(command, gpu_ids=gpu.ids, progress=tp, log_file=dirs.logs / "train.log",
                           on_update=on_update, timeout_s=remaining)

    lora = latest_lora(plan.output_dir, spec.lora_file)
    if lora is None:
        raise JobError("engine_failed", f"training finished but no {spec.lora_file} was saved under {plan.output_dir}")
    with timings.stage("upload"):
        progress.update("upload", None, f"uploading {lora.name}", force=True)
        record = await _upload(req, dirs.job_id, lora, progress)
    epochs_completed = req.training.epochs if tp.completed and not req.training.max_steps else lora.epoch
    output = {k: record[k] for k in ("download_url", "safetensors_url", "repo_url", "download_method",
                                     "expires_in_days", "archive_size_mb", "size_bytes", "sha256", "attempts")
              if k in record}
    output["network_volume_path"] = record.get("network_volume_path") or str(lora.directory)
    return {
        "status": "success", **base,
        "epochs_completed": epochs_completed, "latest_epoch": lora.name,
        "saved_epochs": tp.saved, "steps": tp.step, "final_loss": tp.loss,
        "lora_file": lora.file.name, "lora_format": spec.lora_format,
        "dataset": plan.dataset_info, "output": output, "gpus": gpu.ids,
        "warnings": plan.warnings + [f"the engine dropped size bucket {b} whole (fewer samples than the global "
                                     "batch)" for b in tp.dropped_buckets],
    }


async def _upload(req: TrainRequest, job_id: str, lora, progress: Progress) -> dict:
    from common.uploads import upload
    from common.uploads.spec import UploadSpec

    spec = req.output or UploadSpec()
    files = [lora.file] + [p for p in (lora.directory / "adapter_config.json",) if p.is_file()]
    try:
        return await asyncio.to_thread(upload, files, spec, job_id=job_id, volume_dir=lora.directory,
                                       progress=progress, zip_name=f"{job_id}_{lora.name}.zip")
    except JobError as exc:
        if exc.code == "upload_failed":
            exc.details.append(f"the LoRA stays on the volume at {lora.directory}")
        raise
    except Exception as exc:
        log.exception("upload crashed")
        raise JobError("upload_failed", f"upload failed unexpectedly ({type(exc).__name__}); the LoRA stays on the "
                                        f"volume at {lora.directory}", [str(lora.file)]) from None


async def handler(job: dict) -> dict:
    result = await run_job_async(job, _body)
    if result.get("error_code") in ("engine_failed", "timeout"):
        # a crashed or killed engine may leave GPU memory or ports behind: start the next job on a fresh worker
        result["refresh_worker"] = True
    return result
