"""Bring a manifest's files into MODELS_DIR: download what is missing, skip what is there.

Downloads go through `common.downloads.download` (resume, retries, sha256). `gs://bucket/key`
is read over Google Cloud Storage's public HTTPS endpoint. An exclusive file lock in
MODELS_DIR keeps two processes (the server's lazy fetch and `scripts/fetch_models.py`) from
fetching the same files at once.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

from common.hashing import file_sha256
from handlers.controlnet_pyworker.manifest import Component, FileEntry

log = logging.getLogger("controlnet.fetch")

MAX_FILE_BYTES = 20 * 1024**3
GCS_HTTPS = os.environ.get("GCS_PUBLIC_URL", "https://storage.googleapis.com")

ProgressFn = Callable[[str, int, int | None], None]   # (file label, bytes so far, total or None)


def download_url(source: str) -> str:
    if source.startswith("gs://"):
        return f"{GCS_HTTPS.rstrip('/')}/{source[len('gs://'):]}"
    return source


def missing_files(components: Iterable[Component], models_dir: Path) -> list[tuple[FileEntry, Path]]:
    return [(f, p) for c in components for f, p in c.file_paths(models_dir) if not p.is_file()]


def on_disk(component: Component, models_dir: Path) -> bool:
    return not missing_files([component], models_dir)


@contextmanager
def _lock(models_dir: Path):
    models_dir.mkdir(parents=True, exist_ok=True)
    with open(models_dir / ".fetch.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure(components: Iterable[Component], models_dir: Path, *, progress: ProgressFn | None = None,
           verify_existing: bool = False) -> list[Path]:
    """Download every missing file of `components`; returns the paths fetched.

    With `verify_existing`, files already present are hashed too and a mismatch is re-fetched.
    """
    from common.downloads import download

    components = list(components)
    fetched: list[Path] = []
    if not verify_existing and not missing_files(components, models_dir):
        return fetched   # nothing to write: no lock either, so a read-only MODELS_DIR works
    with _lock(models_dir):
        for comp in components:
            for entry, path in comp.file_paths(models_dir):
                if path.is_file():
                    if not (verify_existing and entry.sha256) or file_sha256(path) == entry.sha256:
                        continue
                    log.warning("%s: sha256 mismatch, fetching again", path)
                    path.unlink()
                label = f"{comp.key}/{entry.name}" if entry.name else comp.key
                log.info("fetching %s -> %s", label, path)
                cb = (lambda done, total, _l=label: progress(_l, done, total)) if progress else None
                download(download_url(entry.source), path, max_bytes=entry.size or MAX_FILE_BYTES,
                         sha256=entry.sha256, progress=cb)
                if entry.sha256 is None:
                    log.warning("%s has no pinned sha256; downloaded file's sha256 is %s", label, file_sha256(path))
                fetched.append(path)
    return fetched
