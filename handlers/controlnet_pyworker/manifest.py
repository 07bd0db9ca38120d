"""The model manifest: which files make up each variant, era LoRA and the depth estimator.

A JSON data file, found in this order: `MODEL_MANIFEST`, `$MODELS_DIR/manifest.json`
(how tiny models ship their own), then the packaged `manifest.json`. Every file has a
`source` (`hf://owner/repo/path`, `https://...`, `s3://bucket/key`, `gs://bucket/key`) and a
`sha256`; `null` means "not pinned yet" (the file is then accepted unchecked and its hash is
logged so it can be pinned). Paths are relative to `MODELS_DIR`.

Standard library only (and `common.model_files`, which is too): the vast.ai front (no pydantic,
no torch) reads variant defaults here.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from common.model_files import SOURCE_SCHEMES as MODEL_SOURCE_SCHEMES
from common.model_files import ModelFile
from handlers.controlnet_pyworker.settings import Settings

PACKAGED = Path(__file__).with_name("manifest.json")
SOURCE_SCHEMES = tuple(f"{s}://" for s in MODEL_SOURCE_SCHEMES)
SCHEDULERS = ("euler", "euler_trailing", "ddim_trailing", "dpm_sde")
COMPONENT_KINDS = ("sdxl", "sdxl_single_file", "controlnet", "vae", "lora", "depth_estimator")
_SHA = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(ValueError):
    pass


@dataclass(frozen=True)
class FileEntry:
    name: str          # relative to the component's path ("" for a single-file component)
    source: str
    sha256: str | None
    size: int | None = None


@dataclass(frozen=True)
class Component:
    key: str
    kind: str
    path: str          # relative to MODELS_DIR: a folder, or the file itself for single files
    files: tuple[FileEntry, ...]
    variant: str | None = None   # diffusers weight variant ("fp16") of the saved files
    config: str | None = None    # sdxl_single_file: component key of a diffusers folder with the configs

    def local_path(self, models_dir: Path) -> Path:
        return models_dir / self.path

    def file_paths(self, models_dir: Path) -> list[tuple[FileEntry, Path]]:
        base = self.local_path(models_dir)
        return [(f, base / f.name if f.name else base) for f in self.files]

    def model_files(self) -> list[ModelFile]:
        """Its files as `common.model_files.ModelFile`s, paths relative to MODELS_DIR."""
        return [ModelFile(source=f.source, path=f"{self.path}/{f.name}" if f.name else self.path,
                          sha256=f.sha256, size=f.size) for f in self.files]


@dataclass(frozen=True)
class SpeedLora:
    component: str
    weight: float = 1.0


@dataclass(frozen=True)
class Variant:
    name: str
    base: str
    controlnet: str
    vae: str | None
    speed_lora: SpeedLora | None
    steps: int
    cfg: float
    scheduler: str
    cost: float        # relative UNet cost per step (workload units)
    description: str = ""


@dataclass(frozen=True)
class Era:
    name: str
    lora: str
    weight: float
    prompt_prefix: str
    negative_prompt: str = ""


@dataclass(frozen=True)
class Manifest:
    source: str
    default_variant: str
    variants: dict[str, Variant]
    eras: dict[str, Era]
    components: dict[str, Component]
    depth_estimator: str | None = None
    notes: list[str] = field(default_factory=list)

    def components_for(self, variant: str, *, eras: bool = True, depth: bool = False) -> list[Component]:
        """Every component a variant needs (its base, ControlNet, VAE, speed LoRA; era LoRAs; depth model)."""
        v = self.variants[variant]
        keys = [v.base, v.controlnet]
        base = self.components[v.base]
        if base.config:
            keys.append(base.config)
        if v.vae:
            keys.append(v.vae)
        if v.speed_lora:
            keys.append(v.speed_lora.component)
        if eras:
            keys += [e.lora for e in self.eras.values()]
        if depth and self.depth_estimator:
            keys.append(self.depth_estimator)
        return [self.components[k] for k in dict.fromkeys(keys)]


def _req(obj: dict, key: str, where: str):
    if key not in obj:
        raise ManifestError(f"{where}: missing '{key}'")
    return obj[key]


def _file(raw: dict, where: str) -> FileEntry:
    source = str(_req(raw, "source", where))
    if not source.startswith(SOURCE_SCHEMES):
        raise ManifestError(f"{where}.source: scheme must be one of {', '.join(SOURCE_SCHEMES)}")
    sha = raw.get("sha256")
    if sha is not None and not _SHA.match(str(sha)):
        raise ManifestError(f"{where}.sha256: 64 lowercase hex digits or null")
    name = str(raw.get("name", ""))
    if name.startswith("/") or ".." in Path(name).parts:
        raise ManifestError(f"{where}.name: must stay inside the component folder")
    return FileEntry(name=name, source=source, sha256=sha, size=raw.get("size"))


def parse(data: dict, source: str = "<dict>") -> Manifest:
    comps: dict[str, Component] = {}
    for key, raw in _req(data, "components", "manifest").items():
        where = f"components.{key}"
        kind = _req(raw, "kind", where)
        if kind not in COMPONENT_KINDS:
            raise ManifestError(f"{where}.kind: one of {', '.join(COMPONENT_KINDS)}")
        path = str(_req(raw, "path", where))
        if path.startswith("/") or ".." in Path(path).parts:
            raise ManifestError(f"{where}.path: must be relative to MODELS_DIR")
        files = tuple(_file(f, f"{where}.files[{i}]") for i, f in enumerate(_req(raw, "files", where)))
        if not files:
            raise ManifestError(f"{where}.files: at least one file")
        comps[key] = Component(key=key, kind=kind, path=path, files=files, variant=raw.get("variant"),
                               config=raw.get("config"))

    def ref(key: str | None, where: str, kinds: tuple[str, ...]) -> str | None:
        if key is None:
            return None
        if key not in comps:
            raise ManifestError(f"{where}: unknown component '{key}'")
        if comps[key].kind not in kinds:
            raise ManifestError(f"{where}: component '{key}' is a {comps[key].kind}, expected {'/'.join(kinds)}")
        return key

    for c in comps.values():
        ref(c.config, f"components.{c.key}.config", ("sdxl",))

    variants = {}
    for name, raw in _req(data, "variants", "manifest").items():
        where = f"variants.{name}"
        speed = raw.get("speed_lora")
        scheduler = _req(raw, "scheduler", where)
        if scheduler not in SCHEDULERS:
            raise ManifestError(f"{where}.scheduler: one of {', '.join(SCHEDULERS)}")
        variants[name] = Variant(
            name=name,
            base=ref(_req(raw, "base", where), f"{where}.base", ("sdxl", "sdxl_single_file")),
            controlnet=ref(_req(raw, "controlnet", where), f"{where}.controlnet", ("controlnet",)),
            vae=ref(raw.get("vae"), f"{where}.vae", ("vae",)),
            speed_lora=SpeedLora(ref(speed["component"], f"{where}.speed_lora", ("lora",)),
                                 float(speed.get("weight", 1.0))) if speed else None,
            steps=int(_req(raw, "steps", where)), cfg=float(_req(raw, "cfg", where)), scheduler=scheduler,
            cost=float(raw.get("cost", 1.0)), description=raw.get("description", ""),
        )
    eras = {}
    for name, raw in data.get("eras", {}).items():
        where = f"eras.{name}"
        eras[name] = Era(name=name, lora=ref(_req(raw, "lora", where), f"{where}.lora", ("lora",)),
                         weight=float(raw.get("weight", 1.0)), prompt_prefix=raw.get("prompt_prefix", ""),
                         negative_prompt=raw.get("negative_prompt", ""))
    default = data.get("default_variant", "lightning")
    if default not in variants:
        raise ManifestError(f"default_variant: '{default}' is not a variant")
    depth = ref(data.get("depth_estimator"), "depth_estimator", ("depth_estimator",))
    return Manifest(source=source, default_variant=default, variants=variants, eras=eras, components=comps,
                    depth_estimator=depth, notes=list(data.get("notes", [])))


def manifest_path(settings: Settings) -> Path:
    if settings.model_manifest:
        return settings.model_manifest
    local = settings.models_dir / "manifest.json"
    return local if local.is_file() else PACKAGED


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime: float) -> Manifest:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ManifestError(f"cannot read model manifest {path}: {exc}") from None
    return parse(data, source=path)


def load(path: str | os.PathLike | None = None, settings: Settings | None = None) -> Manifest:
    """The manifest at `path`, else the one `settings` (default: the environment's) names."""
    p = Path(path) if path else manifest_path(settings or Settings.from_env())
    try:
        mtime = p.stat().st_mtime
    except OSError as exc:
        raise ManifestError(f"cannot read model manifest {p}: {exc}") from None
    return _load_cached(str(p), mtime)
