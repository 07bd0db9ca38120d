"""Bring a manifest's files into MODELS_DIR: download what is missing, skip what is there.

Each file goes through `common.model_files.fetch_file` (resume, retries, sha256, `gs://` as
documented there), the same code `gpuworker models fetch` runs. An exclusive file lock in
MODELS_DIR keeps two processes (the server's lazy fetch and the start-up fetch) from fetching
the same files at once.

    python -m handlers.controlnet_pyworker.fetch --preload      PRELOAD_MODEL's files (start.sh)
    python -m handlers.controlnet_pyworker.fetch --variant V    variant V's files (the image's bake)

Both take the era LoRAs too, and leave out the auto-depth estimator (fetched on first use).
Operators fill a volume from outside with `gpuworker models fetch` (docs/gpuworker.md).
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import sys
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

from common.model_files import fetch_file
from handlers.controlnet_pyworker.manifest import Component, FileEntry

log = logging.getLogger("controlnet.fetch")

MAX_FILE_BYTES = 20 * 1024**3   # a manifest file without `size`


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


def ensure(components: Iterable[Component], models_dir: Path, *, verify_existing: bool = False) -> list[Path]:
    """Download every missing file of `components`; returns the paths fetched.

    With `verify_existing`, files already present are hashed too and a mismatch is re-fetched.
    """
    components = list(components)
    fetched: list[Path] = []
    if not verify_existing and not missing_files(components, models_dir):
        return fetched   # nothing to write: no lock either, so a read-only MODELS_DIR works
    with _lock(models_dir):
        for item in (f for c in components for f in c.model_files()):
            record = fetch_file(item, models_dir, verify_existing=verify_existing, max_bytes=MAX_FILE_BYTES)
            if record["status"] == "fetched":
                fetched.append(models_dir / item.path)
    return fetched


def main(argv: list[str] | None = None) -> int:
    from common.jobs import JobError
    from common.redaction import configure_logging
    from handlers.controlnet_pyworker import manifest
    from handlers.controlnet_pyworker.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--preload", action="store_true", help="PRELOAD_MODEL's variant (unset: the manifest's)")
    which.add_argument("--variant", help="this variant")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    try:
        m = manifest.load(settings=settings)
        variant = settings.preload_variant(m.default_variant) if args.preload else args.variant
        if variant is None:
            return 0
        if variant not in m.variants:
            raise manifest.ManifestError(f"unknown variant '{variant}' (known: {', '.join(m.variants)})")
        fetched = ensure(m.components_for(variant), settings.models_dir)
    except (manifest.ManifestError, JobError) as exc:
        log.error("fetching the files of the %s variant failed: %s", args.variant or "preload", exc)
        return 1
    log.info("%d file(s) fetched; everything for %s is in %s", len(fetched), variant, settings.models_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
