"""The flat model manifest: a list of files, each a source and a target, parsed into `ModelFile`s.

    {"files": [
      {"url": "https://r2.example.com/wan22_high.gguf", "path": "SwarmUI/Models/diffusion_models/wan22_high.gguf",
       "sha256": "<64 hex>", "size": 9600000000},
      {"repo": "Kijai/WanVideo_comfy", "file": "Lightx2v/lora_rank64.safetensors", "revision": "main",
       "path": "SwarmUI/Models/Lora/lightx2v.safetensors"},
      {"url": "hf://stabilityai/sdxl-vae/sdxl_vae.safetensors", "folder": "SwarmUI/Models/VAE"},
      {"url": "s3://my-bucket/loras/era_1920s.safetensors", "path": "loras/era_1920s.safetensors"},
      {"url": "gs://my-bucket/controlnet/depth.safetensors", "path": "controlnet/depth.safetensors"}
    ]}

A bare list is accepted too, and so is a `models` list: the swarm worker's `SWARM_MODEL_MANIFEST`
(`handlers/swarm_worker/manifest.py`, entries `{url, folder, sha256?, filename?}`) is this format.
Per entry the source is `url` (alias `source`), or `repo` + `file` (+ `revision`, `repo_type`
model|dataset) for a Hugging Face repo file; the target, relative to the destination, is `path`,
or `folder` + `filename` (default: the source's file name). `sha256` and `size` are optional and
checked when present; `note` is for the reader. Any other key is refused (a misspelt `sha256`
must not turn the check off). Sources: see `common.model_files`.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from common.model_files import SOURCE_SCHEMES, ModelFile


class ManifestProblems(ValueError):
    """Every problem of a manifest, one `files[i].field: reason` line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class ManifestEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, description="https/http, hf://, s3://, gs:// source")
    source: str | None = Field(None, description="alias of url")
    repo: str | None = Field(None, pattern=r"^[\w.-]+/[\w.-]+$", description="Hugging Face repo id")
    file: str | None = Field(None, min_length=1, description="path of the file inside `repo`")
    revision: str | None = Field(None, description="branch, tag or commit of `repo`")
    repo_type: Literal["model", "dataset"] = Field("model", description="kind of `repo`")
    path: str | None = Field(None, min_length=1, description="target relative to the destination")
    folder: str | None = Field(None, description="target folder, with `filename` or the source's file name")
    filename: str | None = Field(None, description="target file name inside `folder`")
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$", description="checked when given")
    size: int | None = Field(None, ge=0, description="bytes; checked when given")
    note: str | None = Field(None, description="for the reader; not used")

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
            if scheme not in SOURCE_SCHEMES:
                raise ValueError(f"url: unsupported scheme {scheme!r} (allowed: {', '.join(SOURCE_SCHEMES)})")
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

    def model_file(self) -> ModelFile:
        return ModelFile(source=self.source_url(), path=self.target(),
                         sha256=self.sha256.lower() if self.sha256 else None, size=self.size)


def entries_of(data: Any) -> list:
    """The entry list of a parsed manifest: the data itself, or its `files` or `models` list."""
    if isinstance(data, dict):
        for key in ("files", "models"):
            if key in data:
                return data[key]
        raise ManifestProblems(["expected a list of entries or an object with a 'files' list"])
    return data


def parse_entries(entries: Any, *, key: str = "files") -> list[ModelFile]:
    """Check every entry (and that no two share a target) before anything is fetched; problems
    are named `<key>[i].field`."""
    if not isinstance(entries, list) or not entries:
        raise ManifestProblems(["no entries"])
    problems: list[str] = []
    files: list[ModelFile] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(entries):
        try:
            item = ManifestEntry.model_validate(raw).model_file()
        except ValidationError as exc:
            for err in exc.errors():
                where = ".".join(str(p) for p in err["loc"])
                problems.append(f"{key}[{index}]{'.' + where if where else ''}: "
                                f"{err['msg'].removeprefix('Value error, ')}")
            continue
        except ValueError as exc:
            problems.append(f"{key}[{index}]: {exc}")
            continue
        if item.path in seen:
            problems.append(f"{key}[{index}].path: {item.path} is also the target of {key}[{seen[item.path]}]")
            continue
        seen[item.path] = index
        files.append(item)
    if problems:
        raise ManifestProblems(problems)
    return files
