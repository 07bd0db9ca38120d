"""Model manifests: which files a volume needs, where they come from, what they must hash to.

Format (JSON; a bare list of entries is accepted too):

    {"files": [
      {"url": "https://r2.example.com/wan22_high.gguf", "path": "SwarmUI/Models/diffusion_models/wan22_high.gguf",
       "sha256": "<64 hex>", "size": 9600000000},
      {"repo": "Kijai/WanVideo_comfy", "file": "Lightx2v/lora_rank64.safetensors", "revision": "main",
       "path": "SwarmUI/Models/Lora/lightx2v.safetensors"},
      {"url": "hf://stabilityai/sdxl-vae/sdxl_vae.safetensors", "folder": "SwarmUI/Models/VAE"},
      {"url": "s3://my-bucket/loras/era_1920s.safetensors", "path": "loras/era_1920s.safetensors"},
      {"url": "gs://my-bucket/controlnet/depth.safetensors", "path": "controlnet/depth.safetensors"}
    ]}

Per entry: the source is `url` (alias `source`): https/http, `hf://owner/name/path[@rev]`,
`s3://bucket/key` (env `S3_ENDPOINT_URL`, `AWS_*`), `gs://bucket/key` (fetched from
`https://storage.googleapis.com` or env `GCS_PUBLIC_URL`, as controlnet-pyworker does, with
`Authorization: Bearer $GCS_OAUTH_TOKEN` when set);
or `repo` + `file` (+ `revision`, `repo_type` model|dataset) for a Hugging Face repo file.
The target, relative to `--dest`, is `path`; or `folder` + `filename` (default: the source's
file name). `sha256` and `size` are optional and checked when present.

The swarm worker's `SWARM_MODEL_MANIFEST` (entries `{url, folder, sha256?, filename?}`, also
under a `models` key) is this format's subset, so one manifest serves both. Keys this tool
does not use (a variant name, a note) are ignored, so image-specific manifests can carry more.

controlnet-pyworker's manifest (`handlers/controlnet_pyworker/manifest.json`: `components` with
`path` and `files[{name, source, sha256, size?}]`) is read as is: each file lands at
`<component path>/<name>`; `variant=` limits it to the components that variant needs
(its base, ControlNet, VAE, speed LoRA, the era LoRAs and the depth estimator).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from scripts.gpuworker.console import CliError, register_key

SCHEMES = ("https", "http", "hf", "s3", "gs")


class ManifestEntry(BaseModel):
    model_config = ConfigDict(extra="ignore")

    url: str | None = Field(None, description="https/http, hf://, s3://, gs:// source")
    source: str | None = Field(None, description="alias of url")
    repo: str | None = Field(None, pattern=r"^[\w.-]+/[\w.-]+$", description="Hugging Face repo id")
    file: str | None = Field(None, min_length=1, description="path of the file inside `repo`")
    revision: str | None = None
    repo_type: Literal["model", "dataset"] = "model"
    path: str | None = Field(None, min_length=1, description="target relative to the destination")
    folder: str | None = None
    filename: str | None = None
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    size: int | None = Field(None, ge=0)

    @field_validator("path", "folder")
    @classmethod
    def _relative(cls, v: str | None) -> str | None:
        if v is None:
            return v
        p = PurePosixPath(v.replace("\\", "/"))
        if p.is_absolute() or ".." in p.parts:
            raise ValueError("must be a relative path inside the destination (no leading / or ..)")
        return p.as_posix()

    @field_validator("filename")
    @classmethod
    def _plain(cls, v: str | None) -> str | None:
        if v is not None and (not v or "/" in v or "\\" in v or v in (".", "..")):
            raise ValueError("must be a plain file name")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> ManifestEntry:
        sources = [s for s in (self.url, self.source) if s]
        if self.repo or self.file:
            if not (self.repo and self.file):
                raise ValueError("repo and file go together")
            sources.append("hf")
        if len(sources) != 1:
            raise ValueError("give exactly one source: url (or source), or repo + file")
        url = self.url or self.source
        if url:
            scheme = url.split("://", 1)[0].lower() if "://" in url else ""
            if scheme not in SCHEMES:
                raise ValueError(f"url: unsupported scheme {scheme!r} (allowed: {', '.join(SCHEMES)})")
        return self

    def source_url(self) -> str:
        if self.repo and self.file:
            prefix = "datasets/" if self.repo_type == "dataset" else ""
            rev = f"@{self.revision}" if self.revision else ""
            return f"hf://{prefix}{self.repo}{rev}/{self.file.lstrip('/')}"
        return str(self.url or self.source)

    def target(self) -> str:
        if self.path:
            return self.path
        name = self.filename or unquote(PurePosixPath(urlsplit(self.source_url()).path.split("@")[0]).name)
        if self.repo and self.file and not self.filename:
            name = PurePosixPath(self.file).name
        if not name:
            raise ValueError("no file name in the source; set path or filename")
        return f"{self.folder}/{name}" if self.folder else name


@dataclass
class ModelFile:
    url: str
    path: str
    sha256: str | None = None
    size: int | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _controlnet_entries(data: dict, variant: str | None) -> list[dict]:
    """controlnet-pyworker's `components` map as flat entries."""
    components = data["components"]
    if not isinstance(components, dict):
        raise CliError("manifest: 'components' must be an object", 2)
    keys = list(components)
    if variant is not None:
        from handlers.controlnet_pyworker.manifest import ManifestError, parse

        try:
            parsed = parse(data)
        except ManifestError as exc:
            raise CliError(f"manifest: {exc}", 2) from None
        if variant not in parsed.variants:
            raise CliError(f"--variant: {variant!r} unknown (known: {', '.join(parsed.variants)})", 2)
        keys = [c.key for c in parsed.components_for(variant, eras=True, depth=True)]
    entries = []
    for key in keys:
        comp = components[key]
        base = str(comp.get("path") or "") if isinstance(comp, dict) else ""
        for f in (comp.get("files") or []) if isinstance(comp, dict) else []:
            if not isinstance(f, dict):
                entries.append(f)
                continue
            name = str(f.get("name") or "")
            entries.append({"source": f.get("source"), "path": f"{base}/{name}" if name else base,
                            "sha256": f.get("sha256"), "size": f.get("size")})
    return entries


def _entries(data: Any, variant: str | None) -> list:
    if isinstance(data, dict) and "components" in data:
        return _controlnet_entries(data, variant)
    if variant is not None:
        raise CliError("--variant: only a controlnet-pyworker manifest (with 'components') has variants", 2)
    if isinstance(data, dict):
        for key in ("files", "models"):
            if key in data:
                return data[key]
        raise CliError("manifest: expected a list of entries or an object with a 'files' list", 2)
    return data


def _gs_to_https(url: str, headers: dict[str, str]) -> str:
    import os

    parts = urlsplit(url)
    token = os.environ.get("GCS_OAUTH_TOKEN") or os.environ.get("GOOGLE_OAUTH_ACCESS_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {register_key(token)}"
    base = os.environ.get("GCS_PUBLIC_URL", "https://storage.googleapis.com").rstrip("/")
    return f"{base}/{parts.netloc}{parts.path}"


def load_manifest(path: Path, *, variant: str | None = None) -> list[ModelFile]:
    """Parse and check a manifest; every problem names the entry and the field, before any download."""
    if not path.is_file():
        raise CliError(f"manifest: {path} is not a file", 2)
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise CliError(f"manifest {path}: not valid JSON ({exc})", 2) from None
    entries = _entries(data, variant)
    if not isinstance(entries, list) or not entries:
        raise CliError(f"manifest {path}: no entries", 2)
    problems: list[str] = []
    files: list[ModelFile] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(entries):
        try:
            entry = ManifestEntry.model_validate(raw)
            target = entry.target()
        except ValidationError as exc:
            for err in exc.errors():
                where = ".".join(str(p) for p in err["loc"])
                problems.append(f"files[{index}]{'.' + where if where else ''}: {err['msg'].removeprefix('Value error, ')}")
            continue
        except ValueError as exc:
            problems.append(f"files[{index}]: {exc}")
            continue
        if target in seen:
            problems.append(f"files[{index}].path: {target} is also the target of files[{seen[target]}]")
            continue
        seen[target] = index
        headers: dict[str, str] = {}
        url = entry.source_url()
        if url.startswith("gs://"):
            url = _gs_to_https(url, headers)
        files.append(ModelFile(url=url, path=target, sha256=entry.sha256.lower() if entry.sha256 else None,
                               size=entry.size, headers=headers))
    if problems:
        raise CliError(f"manifest {path}: " + "; ".join(problems), 2)
    return files
