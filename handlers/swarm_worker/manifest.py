"""Models a vast.ai / pod instance fetches at start: a manifest of URL, target folder, sha256.

The manifest is JSON, given inline in `SWARM_MODEL_MANIFEST` or as the path of a file:

    [{"url": "https://r2.example/wan22_high.gguf", "folder": "diffusion_models/Wan",
      "sha256": "…", "filename": "optional-name.gguf"}]

Folders are relative to the model root. Files already present are skipped.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from common.jobs import JobError, validation_details

log = logging.getLogger("swarm.manifest")

DEFAULT_MAX_BYTES = 200 * 1024**3


class ManifestEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(..., min_length=8)
    folder: str = Field(..., min_length=1, description="target folder relative to the model root")
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    filename: str | None = None

    @field_validator("folder")
    @classmethod
    def _relative(cls, v: str) -> str:
        p = PurePosixPath(v.replace("\\", "/"))
        if p.is_absolute() or ".." in p.parts:
            raise ValueError("must be a relative folder inside the model root")
        return p.as_posix()

    @field_validator("filename")
    @classmethod
    def _plain_name(cls, v: str | None) -> str | None:
        if v is not None and (not v or "/" in v or "\\" in v or v in (".", "..")):
            raise ValueError("must be a plain file name")
        return v

    def target(self, root: Path) -> Path:
        name = self.filename or unquote(PurePosixPath(urlparse(self.url).path).name)
        if not name:
            raise JobError("invalid_input", f"manifest entry {self.url!r}: no file name in the URL; set 'filename'")
        return root / self.folder / name


def load_manifest(value: str) -> list[ManifestEntry]:
    """Parse inline JSON or the JSON file a path points to; errors name the entry and field."""
    text = value.strip()
    if not text.startswith(("[", "{")):
        path = Path(text)
        if not path.is_file():
            raise JobError("invalid_input", f"SWARM_MODEL_MANIFEST: {text!r} is neither JSON nor a file")
        text = path.read_text()
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise JobError("invalid_input", f"SWARM_MODEL_MANIFEST: not valid JSON ({exc})") from None
    if isinstance(data, dict):
        data = data.get("models", data)
    try:
        return TypeAdapter(list[ManifestEntry]).validate_python(data)
    except ValidationError as exc:
        details = [f"models{d}" if d.startswith("[") else d for d in validation_details(exc)]
        raise JobError("invalid_input", "SWARM_MODEL_MANIFEST: " + "; ".join(details), details) from None


def fetch_models(entries: list[ManifestEntry], root: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> list[dict]:
    """Download what is missing; returns one record per entry (`fetched` or `present`)."""
    from common.downloads import download

    records = []
    for entry in entries:
        dest = entry.target(root)
        if dest.exists() and dest.stat().st_size > 0:
            log.info("model present, skipped: %s", dest)
            records.append({"path": str(dest), "status": "present"})
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        log.info("fetching %s -> %s", urlparse(entry.url)._replace(query="").geturl(), dest)
        download(entry.url, dest, max_bytes=max_bytes, sha256=entry.sha256)
        records.append({"path": str(dest), "status": "fetched", "size_bytes": dest.stat().st_size})
    return records
