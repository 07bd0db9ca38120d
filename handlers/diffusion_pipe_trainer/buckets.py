"""diffusion-pipe's aspect-ratio / frame buckets, computed from the dataset before training.

The engine groups every media file into a size bucket, and cuts each bucket ONCE to a multiple
of the global batch (micro batch x gradient accumulation x data-parallel GPUs): the same files are
left out every epoch, and a bucket smaller than the global batch is dropped whole, logging only a
warning (tdrussell/diffusion-pipe@8f83dbf utils/dataset.py:377-396). This module redoes that
arithmetic, and the engine's seeded shuffles, so that a job can say which files never train and
how many steps an epoch has (tests/test_trainer_engine_contract.py checks it against the engine).

Bucketing as the engine does it (utils/dataset.py):
- aspect ratios: `size_buckets` (460, 496), else 1.0 without `enable_ar_bucket` (497), else `ar_buckets`
  (499) or geomspace(min_ar, max_ar, num_ar_buckets) (505), rounded to 3 decimals and deduplicated (74-78);
- frame buckets: `frame_buckets` with 1 always added (508-513); a video goes to the longest bucket not
  longer than it, never to 1 (838-852), and is skipped when shorter than every video bucket;
- with AR buckets, one size bucket per entry of `resolutions` (419-425): w = sqrt(res^2 * ar) and
  h = res^2 / w, each rounded to the model's multiple (16 for every model here, models/base.py:218);
- a bucket holds (captions per file) x num_repeats entries per file (229, 337; `cache_shuffle_num`
  copies each caption, 48-57), pooled over directories (959-966); image buckets (frames 1) use
  `image_micro_batch_size_per_gpu` when set (363, train.py:408);
- an epoch is the sum over buckets of entries // global batch steps (973, train.py:847), times
  `subsample_ratio` when set (985-987).

Which files a cut leaves out (one directory per bucket, as this worker writes them): the folder's
files, sorted (628-629), are shuffled with a seed from the folder's path (704-708), grouped by bucket
in that order (593-602), and shuffled again with a seed from the size bucket (209-212); the bucket
keeps the first `kept` entries of that order (354-359, 392-394), one caption per file before the
next caption of any file (264-278), so the files from position `kept` on never train. Each shuffle
is `datasets.Dataset.shuffle(seed)`: numpy's default_rng(seed).permutation.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROUND_TO_MULTIPLE = 16  # models/base.py:218; none of this worker's models overrides it
IGNORED_SUFFIXES = (".txt", ".npz", ".json", ".parquet", ".bak", ".db")  # utils/dataset.py:650
_NAMES_SHOWN = 20


@dataclass(frozen=True)
class Media:
    path: Path
    width: int
    height: int
    frames: int = 1  # at the engine's frame rate; 1 = image


@dataclass
class Directory:
    media: list[Media]
    repeats: int
    folder: Path | None = None  # the [[directory]] path: with it, files come in the engine's order


@dataclass
class Bucket:
    key: tuple  # (ar, w, h, frames) with AR buckets, (w, h, frames) with size_buckets
    files: list[Path] = field(default_factory=list)  # in the engine's iteration order when `ordered`
    entries: int = 0
    global_batch: int = 1
    sources: set[int] = field(default_factory=set)  # indices of the directories it pools
    ordered: bool = False

    @property
    def kept(self) -> int:
        return self.entries // self.global_batch * self.global_batch

    @property
    def steps(self) -> int:
        return self.entries // self.global_batch

    def left_out(self) -> list[Path] | None:
        """The files that never train, when the engine's order is known; None when only their count is."""
        if self.kept == 0:
            return list(self.files)
        return self.files[self.kept:] if self.ordered else None

    def label(self) -> str:
        *_, w, h, frames = self.key
        kind = "image" if frames == 1 else f"{frames}-frame video"
        return f"{w}x{h} {kind} bucket"


@dataclass
class Plan:
    buckets: list[Bucket]
    skipped_short: list[Path]
    steps_per_epoch: int

    def never_trained(self) -> list[tuple[Bucket, int]]:
        """(bucket, files that never train) for every bucket the engine cuts below its file count."""
        return [(b, len(b.files) - b.kept) for b in self.buckets if b.kept < len(b.files)]

    def warnings(self) -> list[str]:
        out = []
        for b, n in self.never_trained():
            left_out = b.left_out()
            names = [p.name for p in (left_out if left_out is not None else sorted(b.files))]
            shown = ", ".join(names[:_NAMES_SHOWN]) + (f" and {len(names) - _NAMES_SHOWN} more"
                                                       if len(names) > _NAMES_SHOWN else "")
            if b.kept == 0:
                out.append(f"{n} file(s) never trained: the {b.label()} has {b.entries} sample(s) per epoch, fewer "
                           f"than the global batch of {b.global_batch}, and the engine drops it whole: {shown}")
            else:
                which = "" if left_out is not None else f"{n} of these: "
                out.append(f"{n} file(s) never trained: the {b.label()} has {b.entries} sample(s) per epoch and the "
                           f"engine keeps {b.kept} (a multiple of the global batch of {b.global_batch}), the same "
                           f"ones every epoch; left out: {which}{shown}")
        return out


def seed_from_hash(item: Any) -> int:
    """utils/dataset.py:81-82."""
    return int(hashlib.md5(str(item).encode()).hexdigest(), 16) % int(1e9)


def _shuffled(items: list, seed: int) -> list:
    import numpy as np

    return [items[i] for i in np.random.default_rng(seed).permutation(len(items))]


def _dedup(values: list) -> list[float]:
    """utils/dataset.py:74-78: round to 3 decimals (numpy's rounding for numpy values, as the engine's)."""
    return sorted({float(round(v, 3)) for v in values})


def _ratios(ds: dict[str, Any]) -> list:
    import numpy as np

    if ds.get("size_buckets"):
        return list(np.array([w / h for w, h, _ in ds["size_buckets"]]))
    if not ds.get("enable_ar_bucket", False):
        return list(np.array([1.0]))
    if ars := ds.get("ar_buckets"):
        return [a[0] / a[1] if isinstance(a, (list, tuple)) else a for a in ars]
    return list(np.geomspace(ds["min_ar"], ds["max_ar"], num=ds["num_ar_buckets"]))


def _round(x: float) -> int:
    return int(round(x / ROUND_TO_MULTIPLE) * ROUND_TO_MULTIPLE)


def _frame_bucket(frames: int, frame_buckets: list[int]) -> int | None:
    fitting = [b for b in frame_buckets if b <= frames]
    if not fitting or (frames > 1 and fitting[-1] == 1):
        return None
    return fitting[-1]


def _engine_order(directory: Directory, ds: dict[str, Any]) -> list[Media]:
    """The directory's media in the order the engine lists them (sorted, then shuffled by the folder path)."""
    if directory.folder is None:
        return list(directory.media)
    listed = sorted(p for p in directory.folder.glob("*") if p.is_file() and p.suffix not in IGNORED_SUFFIXES)
    if ds.get("shuffle_metadata", True):
        listed = _shuffled(listed, seed_from_hash(Path(directory.folder)))
    by_path = {m.path: m for m in directory.media}
    return [by_path[p] for p in listed if p in by_path]


def plan(ds: dict[str, Any], directories: list[Directory], *, micro_batch: int, grad_accum: int, world_size: int,
         image_micro_batch: int | None = None) -> Plan:
    """The engine's buckets for `ds` (dataset.toml as written) over `directories`, on `world_size` GPUs."""
    ars = _dedup(_ratios(ds))
    log_ars = [math.log(a) for a in ars]
    frame_buckets = sorted(set(ds.get("frame_buckets") or [1]) | {1})
    size_buckets = sorted(ds.get("size_buckets") or [], key=lambda t: t[-1], reverse=True)
    resolutions = _dedup([math.sqrt(r[0] * r[1]) if isinstance(r, (list, tuple)) else r
                          for r in ds.get("resolutions") or []])
    copies = max(int(ds.get("cache_shuffle_num", 0) or 0), 1)
    batch = {1: (image_micro_batch or micro_batch) * grad_accum * world_size}
    video_batch = micro_batch * grad_accum * world_size

    buckets: dict[tuple, Bucket] = {}
    skipped: list[Path] = []
    for index, directory in enumerate(directories):
        for m in _engine_order(directory, ds):
            log_ar = math.log(m.width / m.height)
            keys: list[tuple]
            if size_buckets:
                order = sorted(range(len(size_buckets)), key=lambda i: abs(log_ar - math.log(
                    size_buckets[i][0] / size_buckets[i][1])))
                found = next((size_buckets[i] for i in order
                              if not (m.frames > 1 and size_buckets[i][-1] == 1) and m.frames >= size_buckets[i][-1]),
                             None)
                keys = [tuple(found)] if found is not None else []
            else:
                ar = ars[min(range(len(ars)), key=lambda i: abs(log_ar - log_ars[i]))]
                frames = _frame_bucket(m.frames, frame_buckets)
                keys = []
                if frames is not None:
                    for res in resolutions:
                        w = math.sqrt(res * res * ar)
                        keys.append((ar, _round(w), _round(res * res / w), frames))
            if not keys:
                skipped.append(m.path)
            for key in keys:
                b = buckets.setdefault(key, Bucket(key, global_batch=batch.get(key[-1], video_batch)))
                b.files.append(m.path)
                b.entries += copies * directory.repeats
                b.sources.add(index)
    for b in buckets.values():
        if len(b.sources) == 1 and directories[next(iter(b.sources))].folder is not None:
            b.files = _shuffled(b.files, seed_from_hash(b.key))
            b.ordered = True
    ordered = sorted(buckets.values(), key=lambda b: b.key)
    steps = sum(b.steps for b in ordered)
    if ratio := ds.get("subsample_ratio"):
        steps = int(steps * ratio)
    return Plan(ordered, skipped, steps)


def media_of(paths: list[Path], kind: str) -> list[Media]:
    """Sizes (and frame counts at the engine's 16 fps) of a prepared folder's files; unreadable files are left out
    (they were refused earlier)."""
    from handlers.diffusion_pipe_trainer.dataset import video_info

    out = []
    for p in paths:
        try:
            if kind == "images":
                from PIL import Image

                with Image.open(p) as im:
                    out.append(Media(p, *im.size))
            else:
                w, h, frames = video_info(p)
                out.append(Media(p, w, h, frames))
        except Exception:  # noqa: BLE001 - the engine skips what it cannot open, and so does the estimate
            continue
    return out
