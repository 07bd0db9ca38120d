"""Captioning: JoyCaption for images (child process), Gemini for videos (whole clip upload).

Every caption gets the trigger word prepended once; existing captions are kept unless
`caption.overwrite`, but still get the trigger word. A `.txt` is only written for a
non-empty caption, so a failed caption can never train as an empty one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from common import processes
from common.jobs import JobError
from common.redaction import redact_text
from handlers.diffusion_pipe_trainer import settings

log = logging.getLogger("trainer.captions")

DEFAULT_GEMINI_MODEL = settings.DEFAULT_GEMINI_MODEL
VIDEO_PROMPT = (
    "Write one plain-prose paragraph of 40 to 120 words, in the present tense, that captions this video clip "
    "for training a video model. Describe the subject's appearance, the motion over time, the camera "
    "(static, pan, dolly, zoom, handheld), the shot size, the setting and the lighting. Do not start with "
    "'The video shows', do not speculate, and use no markdown."
)
OnCaption = Callable[[Path, str], None]


def with_trigger(caption: str, trigger: str | None) -> str:
    caption = " ".join(caption.split())
    if not trigger or caption.lower().startswith(trigger.lower()):
        return caption
    return f"{trigger}, {caption}"


def write_caption(media: Path, caption: str, trigger: str | None) -> str:
    text = with_trigger(caption, trigger)
    if not text.strip():
        raise ValueError("empty caption")
    tmp = media.with_suffix(".txt.tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(media.with_suffix(".txt"))
    return text


def add_trigger_to_existing(files: list[Path], trigger: str | None) -> int:
    """Prefix existing captions with the trigger word where it is missing; returns how many changed."""
    if not trigger:
        return 0
    changed = 0
    for media in files:
        txt = media.with_suffix(".txt")
        old = txt.read_text(encoding="utf-8", errors="replace").strip()
        if old and with_trigger(old, trigger) != " ".join(old.split()):
            write_caption(media, old, trigger)
            changed += 1
    return changed


# ---------------------------------------------------------------- images: JoyCaption


async def caption_images(model_dir: Path, files: list[Path], *, prompt: str, trigger: str | None,
                         max_new_tokens: int, on_caption: OnCaption, log_file: Path,
                         batch_size: int | None = None) -> None:
    """Caption images in a child process; captions are written as they arrive.

    The child is its own process group, killed if this coroutine is cancelled, so
    neither its GPU memory nor its processes outlive the captioning stage.
    """
    cfg = settings.current()
    batch = batch_size or cfg.joycaption_batch_size
    cmd = [sys.executable, "-m", "handlers.diffusion_pipe_trainer.joycaption", "--model", str(model_dir),
           "--prompt", prompt, "--batch-size", str(batch), "--max-new-tokens", str(max_new_tokens)]
    if cfg.joycaption_seed is not None:
        cmd += ["--seed", str(cfg.joycaption_seed)]
    with open(log_file, "ab") as err:
        proc = await processes.spawn(cmd, env=processes.child_env(cfg.pass_env), cwd=Path(__file__).resolve().parents[2],
                                     stdin=asyncio.subprocess.PIPE, stderr=err)
        done: set[str] = set()

        def on_line(line: str, _cut: bool) -> None:
            try:
                msg = json.loads(line)
            except ValueError:
                return
            path = Path(msg["file"])
            caption = (msg.get("caption") or "").strip()
            if not caption:
                raise JobError("engine_failed", f"JoyCaption returned an empty caption for {path.name}")
            write_caption(path, caption, trigger)
            done.add(str(path))
            on_caption(path, caption)

        try:
            assert proc.stdin and proc.stdout
            proc.stdin.write(json.dumps([str(f) for f in files]).encode())
            await proc.stdin.drain()
            proc.stdin.close()
            await processes.pump(proc.stdout, processes.LineSplitter(on_line, keep=1 << 20))
            rc = await proc.wait()
        except BaseException:
            await processes.stop(proc, cfg.kill_grace_s)
            raise
    if rc != 0 or len(done) != len(files):
        tail = _tail(log_file)
        raise JobError("engine_failed", f"JoyCaption captioning failed (exit code {rc}, {len(done)}/{len(files)} "
                                        f"captioned)", tail)


def _tail(path: Path, lines: int = 20) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [redact_text(line) for line in text.splitlines()[-lines:]]


# ---------------------------------------------------------------- videos: Gemini


def gemini_client(api_key: str):
    """A google-genai client; base URL, API version and retry pacing are configurable by env."""
    from google import genai
    from google.genai import types

    cfg = settings.current()
    retry = types.HttpRetryOptions(
        attempts=cfg.gemini_retry_attempts,
        initial_delay=cfg.gemini_retry_initial_delay_s,
        max_delay=60.0,
        jitter=cfg.gemini_retry_jitter_s,
        http_status_codes=[408, 429, 500, 502, 503, 504],
    )
    opts = types.HttpOptions(
        base_url=cfg.gemini_base_url,
        api_version=cfg.gemini_api_version,
        timeout=int(cfg.gemini_timeout_s * 1000),
        retry_options=retry,
    )
    return genai.Client(api_key=api_key, http_options=opts)


def _gemini_error(exc: Exception, model: str, video: Path) -> JobError:
    from google.genai import errors

    if isinstance(exc, errors.APIError):
        if exc.code == 404:
            return JobError("invalid_input", f"caption.gemini_model: Gemini model '{model}' was not found (Gemini "
                                             "models are retired every few months; pass a current name in "
                                             "caption.gemini_model or set GEMINI_MODEL)")
        if exc.code in (401, 403) or exc.code == 400 and "API key" in (exc.message or ""):
            return JobError("invalid_input", f"api_keys.gemini_api_key: Gemini refused the key ({exc.status})")
        return JobError("engine_failed", f"Gemini failed on {video.name}: {exc.code} {exc.status} {exc.message}")
    return JobError("engine_failed", f"Gemini failed on {video.name}: {type(exc).__name__}: {exc}")


class CaptioningStopped(Exception):
    """The job ended (cancelled or out of time) while its captioning thread was still running."""


def caption_video(client, video: Path, *, model: str, prompt: str, poll_s: float = 2.0,
                  processing_timeout_s: float = 600.0, stop: threading.Event | None = None) -> str:
    """Upload the whole clip, wait until Gemini has processed it, caption it, delete the upload."""
    from google.genai import types

    stop = stop or threading.Event()
    mime = mimetypes.guess_type(video.name)[0] or "video/mp4"
    f = client.files.upload(file=str(video), config=types.UploadFileConfig(mime_type=mime))
    try:
        deadline = time.monotonic() + processing_timeout_s
        while f.state == types.FileState.PROCESSING:
            if time.monotonic() > deadline:
                raise JobError("engine_failed", f"Gemini did not finish processing {video.name} in time")
            if stop.wait(poll_s):
                raise CaptioningStopped(video.name)
            f = client.files.get(name=f.name)
        if f.state == types.FileState.FAILED:
            reason = getattr(f.error, "message", None) or "no reason given"
            raise JobError("engine_failed", f"Gemini could not process {video.name}: {reason}")
        for _attempt in range(2):  # an empty or blocked answer is asked once more
            r = client.models.generate_content(model=model, contents=[f, prompt])
            text = (r.text or "").strip()
            if text:
                return text
        finish = r.candidates[0].finish_reason if r.candidates else "no candidates"
        raise JobError("engine_failed", f"Gemini returned no caption for {video.name} ({finish})")
    finally:
        try:
            client.files.delete(name=f.name)
        except Exception as exc:  # an upload left behind expires after 48 h on its own
            log.warning("could not delete Gemini file %s: %s", f.name, exc)


def caption_videos(files: list[Path], *, api_key: str, model: str | None, prompt: str | None,
                   trigger: str | None, on_caption: OnCaption, stop: threading.Event | None = None) -> None:
    """Caption the clips one by one; setting `stop` ends the loop at the next clip or processing poll."""
    cfg = settings.current()
    model = model or cfg.gemini_model
    full_prompt = prompt or VIDEO_PROMPT
    if trigger:
        full_prompt += f" Begin the caption with '{trigger}' and refer to the main subject as {trigger}."
    client = gemini_client(api_key)
    poll = cfg.gemini_poll_s
    for video in files:
        if stop is not None and stop.is_set():
            raise CaptioningStopped(video.name)
        try:
            caption = caption_video(client, video, model=model, prompt=full_prompt, poll_s=poll, stop=stop)
        except (JobError, CaptioningStopped):
            raise
        except Exception as exc:
            raise _gemini_error(exc, model, video) from None
        write_caption(video, caption, trigger)
        on_caption(video, caption)
