"""diffusion-pipe's `config.toml` and `dataset.toml`, built from the registry and `training`.

Written with tomlkit (never by string formatting) and read back to check that what the
engine will parse is what was meant. Paths are absolute: the engine runs with its own
repo as the working directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit

from common.jobs import JobError
from handlers.diffusion_pipe_trainer import engine_keys
from handlers.diffusion_pipe_trainer.models import ModelSpec, fill_paths
from handlers.diffusion_pipe_trainer.schema import MODEL_KEYS, TrainingSpec

CONFIG_NAME = "config.toml"
DATASET_NAME = "dataset.toml"

# Seed key -> (table, engine key); table None = top level.
SEED_KEY_MAP: dict[str, tuple[str | None, str]] = {
    "epochs": (None, "epochs"),
    "batch_size": (None, "micro_batch_size_per_gpu"),
    "gradient_accumulation_steps": (None, "gradient_accumulation_steps"),
    "gradient_clipping": (None, "gradient_clipping"),
    "warmup_steps": (None, "warmup_steps"),
    "save_every_n_epochs": (None, "save_every_n_epochs"),
    "checkpoint_every_n_minutes": (None, "checkpoint_every_n_minutes"),
    "checkpoint_every_n_epochs": (None, "checkpoint_every_n_epochs"),
    "save_dtype": (None, "save_dtype"),
    "activation_checkpointing": (None, "activation_checkpointing"),
    "caching_batch_size": (None, "caching_batch_size"),
    "max_steps": (None, "max_steps"),
    "learning_rate": ("optimizer", "lr"),
    "optimizer_type": ("optimizer", "type"),
    "optimizer_betas": ("optimizer", "betas"),
    "optimizer_weight_decay": ("optimizer", "weight_decay"),
    "optimizer_eps": ("optimizer", "eps"),
    "lora_rank": ("adapter", "rank"),
    "lora_dtype": ("adapter", "dtype"),
}


@dataclass(frozen=True)
class DatasetDirs:
    """The flat media folders of a prepared dataset with their repeats."""

    images: Path | None
    videos: Path | None
    image_repeats: int
    video_repeats: int


def build_config(spec: ModelSpec, training: TrainingSpec, *, models_dir: Path, output_dir: Path,
                 dataset_toml: Path) -> dict[str, Any]:
    cfg: dict[str, Any] = {"output_dir": str(output_dir), "dataset": str(dataset_toml)}
    tables: dict[str, dict[str, Any]] = {
        "model": fill_paths(dict(spec.model_table), str(models_dir)),
        "adapter": {"type": "lora"},
        "optimizer": {},
    }
    takes = engine_keys.SEED_OPTIMIZER_KWARGS[training.optimizer()] | engine_keys.OPTIMIZER_COMMON
    for seed_key, (table, key) in SEED_KEY_MAP.items():
        value = getattr(training, seed_key)
        if value is None or (table == "optimizer" and key not in takes):
            continue  # e.g. no betas/eps for sgd or automagic: their constructors would raise a TypeError
        (tables[table] if table else cfg)[key] = value
    cfg["pipeline_stages"] = 1
    cfg["steps_per_print"] = 1  # DeepSpeed's per-step line (train.py:428) is what progress reads
    if "videos" in spec.media:
        cfg["video_clip_mode"] = training.video_clip_mode or spec.video_clip_mode or "single_middle"

    def model_key(key: str) -> str:
        return spec.transformer_dtype_key if key in ("transformer_dtype", "diffusion_model_dtype") else key

    for key, value in training.passthrough().items():
        if key in engine_keys.DATASET:
            continue  # build_dataset writes these
        if key == "model":
            tables["model"].update({model_key(k): v for k, v in value.items()})
        elif key in MODEL_KEYS:
            tables["model"][model_key(key)] = value
        elif key in tables:
            tables[key].update(value)
        else:
            cfg[key] = value
    cfg.update(tables)
    return cfg


def build_dataset(spec: ModelSpec, training: TrainingSpec, dirs: DatasetDirs) -> dict[str, Any]:
    extra = training.passthrough()
    ds: dict[str, Any] = {
        "resolutions": extra.get("resolutions") or [training.resolution or spec.resolution],
        "enable_ar_bucket": True,
        "min_ar": 0.5,
        "max_ar": 2.0,
        "num_ar_buckets": 7,
    }
    if spec.frame_buckets is not None:
        ds["frame_buckets"] = list(training.frame_buckets or spec.frame_buckets)
    for key in engine_keys.DATASET.keys() - {"resolutions"}:
        if key in extra:
            ds[key] = extra[key]
    directories = []
    if dirs.images is not None:
        directories.append({"path": str(dirs.images), "num_repeats": dirs.image_repeats})
    if dirs.videos is not None:
        directories.append({"path": str(dirs.videos), "num_repeats": dirs.video_repeats})
    if not directories:
        raise JobError("invalid_input", "dataset: no media to train on")
    ds["directory"] = directories
    return ds


def to_toml(data: dict[str, Any]) -> str:
    """Scalars first, then tables, then arrays of tables, as TOML requires."""
    doc = tomlkit.document()
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict) and not _is_table_array(v)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    arrays = {k: v for k, v in data.items() if _is_table_array(v)}
    for k, v in scalars.items():
        doc.add(k, _item(v))
    for k, v in tables.items():
        table = tomlkit.table()
        for tk, tv in v.items():
            table.add(tk, _item(tv))
        doc.add(k, table)
    for k, v in arrays.items():
        aot = tomlkit.aot()
        for entry in v:
            t = tomlkit.table()
            for tk, tv in entry.items():
                t.add(tk, _item(tv))
            aot.append(t)
        doc.add(k, aot)
    text = tomlkit.dumps(doc)
    if tomlkit.parse(text).unwrap() != data:
        raise JobError("internal", "the generated TOML does not read back as written")
    return text


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(e, dict) for e in v)


def _item(v: Any) -> Any:
    """Lists of dicts inside a table become inline tables (z_image's text_encoders)."""
    if isinstance(v, list):
        arr = tomlkit.array()
        for e in v:
            arr.append(_inline(e) if isinstance(e, dict) else e)
        return arr
    if isinstance(v, dict):
        return _inline(v)
    return v


def _inline(d: dict[str, Any]) -> Any:
    t = tomlkit.inline_table()
    for k, v in d.items():
        t.append(k, _item(v))
    return t


def write_configs(config_dir: Path, config: dict[str, Any], dataset: dict[str, Any]) -> dict[str, str]:
    """Write both files (dataset.toml path is already inside `config`); return {file name: TOML text}."""
    config_dir.mkdir(parents=True, exist_ok=True)
    texts = {CONFIG_NAME: to_toml(config), DATASET_NAME: to_toml(dataset)}
    for name, text in texts.items():
        tmp = config_dir / (name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(config_dir / name)
    return texts
