"""Models a vast.ai / pod instance fetches at start, from `SWARM_MODEL_MANIFEST`.

The value is the manifest's JSON inline, or the path of a file holding it. The format is the
flat manifest of `common.model_manifest` (the one `gpuworker models fetch` reads), entries as a
bare list or under `models` (or `files`), targets relative to the model root:

    [{"url": "https://r2.example/wan22_high.gguf", "folder": "diffusion_models/Wan",
      "sha256": "…", "filename": "optional-name.gguf"}]

Files already present are skipped (not re-hashed: a start must not read 100 GB); the others go
through `common.model_files.fetch_file`, capped at 200 GiB a file unless the entry gives `size`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from common.jobs import JobError
from common.model_files import ModelFile, fetch_file
from common.model_manifest import ManifestProblems, entries_of, parse_entries

log = logging.getLogger("swarm.manifest")

DEFAULT_MAX_BYTES = 200 * 1024**3
SETTING = "SWARM_MODEL_MANIFEST"


def load_manifest(value: str) -> list[ModelFile]:
    """Parse inline JSON or the JSON file a path points to; errors name the entry and field."""
    text = value.strip()
    if not text.startswith(("[", "{")):
        path = Path(text)
        if not path.is_file():
            raise JobError("invalid_input", f"{SETTING}: {text!r} is neither JSON nor a file")
        text = path.read_text()
    try:
        return parse_entries(entries_of(json.loads(text)), key="models")
    except ManifestProblems as exc:
        raise JobError("invalid_input", f"{SETTING}: {exc}", exc.problems) from None
    except ValueError as exc:
        raise JobError("invalid_input", f"{SETTING}: not valid JSON ({exc})") from None


def fetch_models(files: list[ModelFile], root: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> list[dict]:
    """Download what is missing; one `common.model_files.fetch_file` record per file, `path` under `root`."""
    records = []
    for item in files:
        record = fetch_file(item, root, verify_existing=False, max_bytes=max_bytes)
        if record["status"] == "present":
            log.info("model present, skipped: %s", item.target(root))
        records.append({**record, "path": str(item.target(root))})
    return records


def prefetch_models(files: list[ModelFile], root: Path) -> bool:
    """Fetch a standalone worker's models before it starts, logging each; False (logged) when one fails."""
    try:
        for rec in fetch_models(files, root):
            log.info("model %s: %s", rec["status"], rec["path"])
    except JobError as exc:
        log.error("model download failed: %s", exc)
        return False
    return True
