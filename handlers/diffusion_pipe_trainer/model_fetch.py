"""Model weights in the volume's shared `models/` dir: fetched once, by one worker at a time.

A folder counts as downloaded only when its `.complete` marker exists (a non-empty folder
may be a half-finished download). Downloads go to `<name>.partial/` (kept across attempts,
so huggingface_hub resumes its `.incomplete` files), are checked against the registry's
required paths, then renamed into place and marked. A file lock per folder keeps
concurrent workers on the same volume from downloading the same weights twice.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from common.jobs import JobError
from handlers.diffusion_pipe_trainer import settings
from handlers.diffusion_pipe_trainer.models import Fetch

log = logging.getLogger("trainer.models")
MARKER = ".complete"


def is_complete(models_dir: Path, item: Fetch) -> bool:
    return (models_dir / item.local_dir / MARKER).is_file()


def ensure(models_dir: Path, item: Fetch, *, token: str | None = None) -> Path:
    """Return `models_dir/<local_dir>`, downloading it first unless it is complete."""
    from filelock import FileLock, Timeout

    target = models_dir / item.local_dir
    if is_complete(models_dir, item):
        return target
    locks = models_dir / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(locks / (item.local_dir.replace("/", "_") + ".lock")), timeout=settings.current().model_lock_timeout_s):
            if is_complete(models_dir, item):  # another worker finished it while we waited
                return target
            _download(models_dir, item, token)
    except Timeout:
        raise JobError("download_failed", f"timed out waiting for another worker to download {item.repo_id}") from None
    return target


def _download(models_dir: Path, item: Fetch, token: str | None) -> None:
    import httpx2
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    target = models_dir / item.local_dir
    partial = models_dir / (item.local_dir + ".partial")
    if target.exists():  # an unmarked folder: an interrupted download from before this code, or junk
        if partial.exists():
            shutil.rmtree(target)
        else:
            target.rename(partial)
    log.info("downloading %s into %s", item.repo_id, target)
    try:
        snapshot_download(
            repo_id=item.repo_id,
            local_dir=str(partial),
            allow_patterns=list(item.allow_patterns) if item.allow_patterns else None,
            ignore_patterns=list(item.ignore_patterns) or None,
            token=token or None,
            endpoint=settings.current().hf_endpoint,  # read per call, not once at import
        )
    except GatedRepoError:
        raise JobError("download_failed", f"{item.repo_id} is gated: the Hugging Face token's account must accept "
                                          "its licence on the model page") from None
    except RepositoryNotFoundError:
        raise JobError("download_failed", f"{item.repo_id} was not found or the token cannot read it") from None
    except (OSError, httpx2.HTTPError) as exc:  # Hub errors, an unreachable Hub, a dropped connection, a full disk
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise JobError("download_failed", f"downloading {item.repo_id} failed: {reason}; what was fetched stays in "
                                          f"{partial.name} and the next attempt resumes it") from None
    missing = [p for p in item.required if not (partial / p).exists()]
    if missing:
        raise JobError("download_failed", f"{item.repo_id} is missing {', '.join(missing)} after download")
    shutil.rmtree(partial / ".cache", ignore_errors=True)
    partial.rename(target)
    (target / MARKER).write_text(f"{item.repo_id}\n")
