"""The `generate` action: one SwarmUI generation, outputs returned inline or uploaded."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import mimetypes
import re
from pathlib import Path
from typing import Any

from common.hashing import file_sha256
from common.jobs import JobError, Progress, Timings
from common.swarmui import SwarmUIError, SwarmUIUnavailable, is_data_url
from common.volumes import on_volume, safe_job_id
from handlers.swarm_worker.runtime import WorkerRuntime
from handlers.swarm_worker.schema import GenerateInput
from handlers.swarm_worker.swarm_process import SwarmProcess, SwarmStartError

log = logging.getLogger("swarm.generate")

MODEL_FIELDS = ("model", "videomodel", "videoswapmodel")
CRASH_NOTED_SECONDS = 10  # how long a crashed generation's reply waits for the process watcher


def _describe(path: Path) -> dict[str, Any]:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return {"filename": path.name, "mime": mime, "kind": mime.split("/")[0],
            "size_bytes": path.stat().st_size, "sha256": file_sha256(path)}


def _parse_metadata(text: str | None) -> Any:
    """SwarmUI's per-output metadata: usually a JSON object as a string (seed, model, parameters used)."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _model_key(name: str) -> str:
    return re.sub(r"\.(safetensors|ckpt|pt|pth|bin|gguf|sft|engine)$", "", name.replace("\\", "/").strip("/"),
                  flags=re.I).lower()


async def check_models(rt: WorkerRuntime, body: dict[str, Any]) -> None:
    """Name a missing model before SwarmUI spends time on the request (SwarmUI's own error is vaguer).

    SwarmUI lists models from memory, filled at its start and by a refresh: a model missing there
    may have been put on the volume since, so when the volume changed SwarmUI is refreshed once first."""
    wanted = {f: str(body[f]) for f in MODEL_FIELDS if body.get(f)}
    if not wanted:
        return

    async def missing_models() -> tuple[list[str], list[str]]:
        names = (await rt.process.client.list_models("Stable-Diffusion")).names
        known = {_model_key(n) for n in names}
        return names, [f"params.{f}: model {v!r} is not on this worker" for f, v in wanted.items()
                       if _model_key(v) not in known]

    names, missing = await missing_models()
    if missing:
        await rt.refresh_model_tree()
        if rt.process.models_stale:
            log.info("model(s) not listed by SwarmUI and the volume changed, refreshing: %s", missing)
            await rt.process.refresh_models()
            names, missing = await missing_models()
    if missing:
        sample = ", ".join(sorted(names)[:10]) or "none"
        raise JobError("invalid_input", "; ".join(missing) + f" (available: {sample})", missing)


class RunEnd:
    """How the SwarmUI run a generation started on ended (exit code, restarted or not, last log lines),
    noted when the process watcher (SwarmProcess._watch, which has no public hook) is done with the
    exit: it reads the log to the end, then restarts SwarmUI or gives up. The note is taken in the
    watcher's done callback, before a restart clears the log tail (that waits for a thread round
    trip), however late the generation's broken connection is reported."""

    def __init__(self, process: SwarmProcess):
        self.process = process
        self.pid = process.pid
        self.watcher: asyncio.Task | None = process._monitor
        self.seen: tuple[int | None, bool, list[str]] | None = None
        if self.watcher is not None:
            self.watcher.add_done_callback(self._note)

    def _note(self, _watcher: asyncio.Task) -> None:
        p = self.process
        self.seen = (p.last_exit, p.state in ("exited", "starting", "ready"), p.tail(15))

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.remove_done_callback(self._note)

    async def error(self, exc: Exception) -> JobError:
        """The error of the generation whose connection broke."""
        process = self.process
        if self.seen is None and (process.pid != self.pid or await process.wait_exit(3) is None):
            return JobError("engine_failed", f"SwarmUI connection failed during the generation: {exc}",
                            process.tail(15))
        if self.seen is None and self.watcher is not None:
            await asyncio.wait({self.watcher}, timeout=CRASH_NOTED_SECONDS)
        code, restarting, tail = self.seen or (process.last_exit, process.state != "failed", process.tail(15))
        restart = "it is being restarted" if restarting else "it will not be restarted again"
        return JobError("engine_failed", f"SwarmUI exited with code {code} during the generation; {restart}. "
                        "Last log lines are in details.", tail)


INIT_IMAGE_MAX_BYTES = 50 * 1024 * 1024
_IMAGE_MAGIC = ((b"\x89PNG", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"RIFF", "image/webp"),
                (b"GIF8", "image/gif"))


def _fetch_init_image(url: str, dest_dir: Path) -> str:
    """Download the init image and return it as the data: URL SwarmUI takes."""
    from common.downloads import download

    dest_dir.mkdir(parents=True, exist_ok=True)
    path = download(url, dest_dir / "init_image", max_bytes=INIT_IMAGE_MAX_BYTES)
    data = path.read_bytes()
    mime = next((m for magic, m in _IMAGE_MAGIC if data.startswith(magic)), None)
    if mime is None:
        raise JobError("invalid_input", "init_image_url: the file is not a PNG, JPEG, WebP or GIF image")
    return f"data:{mime};base64," + base64.b64encode(data).decode()


async def run_generate(rt: WorkerRuntime, job: dict, req: GenerateInput, timings: Timings,
                       progress: Progress) -> dict:
    job_dir = rt.cfg.output_dir / safe_job_id(job.get("id"))
    initimage = None
    if req.init_image_url:
        with timings.stage("download"):
            initimage = await asyncio.to_thread(_fetch_init_image, req.init_image_url, job_dir / "inputs")
    params = req.swarm_params(initimage)
    body = params.to_body()
    with timings.stage("startup"):
        try:
            await rt.ensure_ready()
        except SwarmStartError as exc:
            raise JobError("engine_failed", f"SwarmUI is not available: {exc}", exc.tail[-15:]) from None
    await check_models(rt, body)
    progress.update("generate", 0, "sending the generation to SwarmUI")

    def on_event(event: dict) -> None:
        prog = event.get("gen_progress")
        if isinstance(prog, dict) and isinstance(prog.get("overall_percent"), (int, float)):
            progress.update("generate", 100 * prog["overall_percent"])

    client, run = rt.process.client, RunEnd(rt.process)
    with timings.stage("generate"):
        try:
            # its own SwarmUI session, so that a cancelled or timed-out job interrupts its generation alone
            result = await client.generate(body, websocket=req.websocket, on_event=on_event,
                                           timeout=req.timeout_seconds, own_session=True)
        except SwarmUIUnavailable as exc:
            raise await run.error(exc) from None
        except SwarmUIError as exc:
            raise JobError("engine_failed", f"SwarmUI refused the generation: {exc.message}") from None
        finally:
            run.close()
    if not result.outputs:
        raise JobError("engine_failed", "SwarmUI finished without any output")

    with timings.stage("collect"):
        files = []
        for i, ref in enumerate(result.outputs):
            files.append(await client.save_output(ref, job_dir, index=i))
            if not is_data_url(ref):  # SwarmUI's copy is not needed any more
                (rt.cfg.swarm_output_dir / ref.lstrip("/")[len("View/"):]).unlink(missing_ok=True)
        outputs = [await asyncio.to_thread(_describe, f) for f in files]
        for out, metadata in zip(outputs, result.metadata, strict=True):
            out["metadata"] = _parse_metadata(metadata)

    total = sum(o["size_bytes"] for o in outputs)
    inline_max = rt.cfg.inline_max_bytes if req.inline_max_bytes is None else req.inline_max_bytes
    if req.output is None and total <= inline_max:
        for out, path in zip(outputs, files, strict=True):
            out["base64"] = base64.b64encode(path.read_bytes()).decode()
        delivery = "inline"
    else:
        from common.uploads import upload

        progress.update("upload", 0, f"uploading {len(files)} output(s), {total} bytes")
        # on a network volume the job's copies are what `upload` points to when every method fails
        volume_dir = rt.cfg.output_dir if on_volume(rt.cfg.output_dir) else None
        with timings.stage("upload"):
            for out, path in zip(outputs, files, strict=True):
                try:
                    out["upload"] = await asyncio.to_thread(upload, [path], req.output, job_id=str(job.get("id")),
                                                            volume_dir=volume_dir, progress=progress)
                except JobError as exc:
                    if volume_dir is None:  # say where the outputs are when no volume keeps them
                        exc.details.append(f"the outputs are kept on this worker at {job_dir}")
                    raise
        delivery = "upload"
    progress.update("done", 100, f"{len(outputs)} output(s)", force=True)
    shown = {k: v for k, v in body.items() if k != "initimage"}
    return {"success": True, "outputs": outputs, "delivery": delivery, "params": shown,
            "progress_events": result.progress_events}
