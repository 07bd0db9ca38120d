"""The training job, stage by stage (the RunPod adapter is handler.py):

validate -> download + extract dataset -> caption -> write configs -> [dry_run stops here]
-> fetch model weights -> train (child process group) -> upload the latest epoch's LoRA.

Async, so that a cancel or the time limit reaches it as CancelledError, which ends the
training process group before the cancellation goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import processes
from common.jobs import JobError, Progress, Timings, error_result
from common.redaction import redact
from common.result_models import checked
from handlers.diffusion_pipe_trainer import (
    buckets,
    configs,
    dataset,
    hub_updates,
    model_fetch,
    preflight,
    preparation,
    settings,
    training,
)
from handlers.diffusion_pipe_trainer.models import REGISTRY, ModelSpec
from handlers.diffusion_pipe_trainer.outputs import clear_interrupted_saves, latest_lora
from handlers.diffusion_pipe_trainer.responses import DryRunOutcome, TrainOutcome
from handlers.diffusion_pipe_trainer.schema import TrainRequest, parse_request
from handlers.diffusion_pipe_trainer.train_log import TrainProgress
from handlers.diffusion_pipe_trainer.workspace import JobDirs, job_dirs

log = logging.getLogger("trainer")
REQUEST_FILE = "request.json"


def time_limit(req: TrainRequest) -> float:
    """The job's time limit: its own `timeout_s`, else the worker's TRAINING_TIMEOUT_S (24 h by default)."""
    return req.timeout_s or settings.current().timeout_s


async def run(job: dict, timings: Timings) -> dict:
    """The whole job (RunPod's `input` in `job`); its result, or a JobError."""
    started = time.monotonic()
    with timings.stage("validate"):
        req = parse_request(job.get("input"))
        if not req.dry_run:
            from common.uploads import check  # a method without its settings fails now, not after training

            check(req.output)
    spec: ModelSpec = REGISTRY[req.model_type]
    gpu = preflight.gpus_for(req)
    if not req.dry_run:
        await asyncio.to_thread(preflight.check, spec, gpu)
    dirs = job_dirs(str(job.get("id") or "local_test"))
    hub = await asyncio.to_thread(hub_updates.start_for, req, dirs.job_id)
    dirs.create()
    progress = Progress(job, min_interval=settings.current().progress_interval_s, sinks=[hub] if hub else None)
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


async def _plan(req: TrainRequest, spec: ModelSpec, gpu: preflight.Gpus, dirs: JobDirs, progress: Progress,
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
            sets = await preparation.prepare_dataset(req, dirs, progress)
            if "videos" in sets and spec.frame_buckets is not None:
                frame_buckets = list(req.training.frame_buckets or spec.frame_buckets)
                warnings += await asyncio.to_thread(dataset.check_video_lengths, sets["videos"], frame_buckets)
        with timings.stage("caption"):
            summary.update(await preparation.caption(req, sets, dirs, progress))
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
        token = preparation.hf_token(req)
        for i, item in enumerate(spec.fetch):
            progress.update("fetching_models", 100.0 * i / len(spec.fetch), f"{item.repo_id}", force=True)
            await asyncio.to_thread(model_fetch.ensure, dirs.models, item, token=token)


def _dry_run_result(req: TrainRequest, spec: ModelSpec, gpu: preflight.Gpus, dirs: JobDirs, plan: _Plan,
                    command: list[str]) -> dict:
    steps = plan.buckets.steps_per_epoch
    return {
        "configs": plan.texts, "config_dir": str(dirs.config), "dataset": plan.dataset_info,
        "model_paths": {f.repo_id: str(dirs.models / f.local_dir) for f in spec.fetch},
        "estimated_steps_per_epoch": steps,
        "estimated_total_steps": steps * req.training.epochs if not req.training.max_steps
        else min(steps * req.training.epochs, req.training.max_steps),
        "gpus": gpu.ids, "command": command,
        "warnings": plan.warnings + [f"a real job would be refused: {p}" for p in preflight.engine_problems(spec)],
        "lora_file": spec.lora_file, "lora_format": spec.lora_format,
    }


async def _train(req: TrainRequest, spec: ModelSpec, gpu: preflight.Gpus, dirs: JobDirs, progress: Progress,
                 timings: Timings, started: float) -> dict:
    base = {"job_id": dirs.job_id, "model_type": req.model_type, "model_name": spec.model_name}
    limit = time_limit(req)
    # the time limit covers everything up to the end of training; training enforces its share itself,
    # stopping the process group with the epoch and step it reached. The upload after it is not cut off.
    before_training = asyncio.timeout_at(started + limit)
    try:
        async with before_training:
            plan = await _plan(req, spec, gpu, dirs, progress, timings)
            if req.dry_run:
                command = training.command(plan.cfg_path, resume=bool(req.resume), gpu_ids=gpu.ids,
                                           master_port=processes.free_port())
                return checked(DryRunOutcome, {"status": "dry_run", **base,
                                               **_dry_run_result(req, spec, gpu, dirs, plan, command)})
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
                               master_port=processes.free_port())
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
    return checked(TrainOutcome, {
        "status": "success", **base,
        "epochs_completed": epochs_completed, "latest_epoch": lora.name,
        "saved_epochs": tp.saved, "steps": tp.step, "final_loss": tp.loss,
        "lora_file": lora.file.name, "lora_format": spec.lora_format,
        "dataset": plan.dataset_info, "output": output, "gpus": gpu.ids,
        "warnings": plan.warnings + [f"the engine dropped size bucket {b} whole (fewer samples than the global "
                                     "batch)" for b in tp.dropped_buckets],
    })


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


