"""Where a worker's persistent files go: the volume it runs on, and job ids as folder names."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

RUNPOD_VOLUME = Path("/runpod-volume")
POD_VOLUME = Path("/workspace")
_PLAIN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def volume_root(named: Path | None = None) -> Path | None:
    """The persistent volume this worker runs on, else None.

    `named` (a settings object's `VOLUME_DIR`) or else `VOLUME_DIR` when the operator names one; else RunPod serverless's network volume
    (`/runpod-volume`: it exists only when one is attached); else `/workspace` when something is
    mounted there (a RunPod pod's volume, a vast.ai volume). A plain `/workspace` folder is not a
    volume: the images create one, and files there go with the container."""
    if named := named or os.environ.get("VOLUME_DIR"):
        return Path(named)
    if RUNPOD_VOLUME.is_dir():
        return RUNPOD_VOLUME
    if os.path.ismount(POD_VOLUME):
        return POD_VOLUME
    return None


def on_volume(path: Path, named: Path | None = None) -> bool:
    """Whether `path` lies on the persistent volume (`volume_root`), so files there outlive the worker."""
    root = volume_root(named)
    return root is not None and Path(path).resolve().is_relative_to(root.resolve())


def safe_job_id(job_id: object) -> str:
    """A job id usable as one folder or file name: the id itself when it is a plain name (RunPod's are),
    else the same id with each run of other characters turned into `_` (so a resume finds the same
    folder), cut to 128 characters; a fresh `job-<hex>` when nothing usable is left."""
    text = "" if job_id is None else str(job_id)
    if _PLAIN_ID.fullmatch(text):
        return text
    cleaned = _UNSAFE.sub("_", text)[:128].lstrip("._-").rstrip(".")
    return cleaned or f"job-{uuid.uuid4().hex[:12]}"
