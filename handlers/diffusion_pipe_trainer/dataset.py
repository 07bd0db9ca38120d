"""Dataset preparation: download, safe extraction, flattening, caption pairing, checks.

diffusion-pipe scans each `[[directory]]` non-recursively and silently skips media without
a caption file, so nested zips are flattened (names kept unique) and every media file is
paired with its same-name `.txt` here, where a problem can still be reported clearly.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common.jobs import JobError
from handlers.diffusion_pipe_trainer import settings

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm"}
KIND_EXTS = {"images": IMAGE_EXTS, "videos": VIDEO_EXTS}
_LIST_LIMIT = 20


@dataclass
class MediaSet:
    """One flat folder of media of a kind, with which files already have a caption."""

    kind: str
    folder: Path
    media: list[Path] = field(default_factory=list)
    uncaptioned: list[Path] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # archive members that are neither media nor captions

    @property
    def count(self) -> int:
        return len(self.media)


def _names(paths: list, limit: int = _LIST_LIMIT) -> str:
    shown = ", ".join(str(p) for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def fetch_archive(url: str, kind: str, downloads: Path, *, sha256: str | None = None,
                  progress: Callable[..., None] | None = None, hf_token: str | None = None,
                  stop: threading.Event | None = None) -> Path:
    from common.archives import archive_kind
    from common.downloads import download

    dest = downloads / f"{kind}.archive"
    # loopback/private hosts are refused unless the worker runs with ALLOW_PRIVATE_DOWNLOADS=1
    # a private dataset repo on the Hub (hf://...) is read with the job's Hugging Face token
    headers = {"Authorization": f"Bearer {hf_token}"} if hf_token and url.startswith("hf://") else None
    path = download(url, dest, max_bytes=settings.current().max_dataset_bytes, sha256=sha256, progress=progress, headers=headers,
                    stop=stop)
    if archive_kind(path) is None:
        with open(path, "rb") as f:
            head = f.read(16)
        looks = "HTML" if head.lstrip().lower().startswith((b"<!doctype", b"<html")) else "unknown data"
        raise JobError("invalid_input", f"dataset.{kind}_url: the download is not a zip or tar archive "
                                        f"({looks}, {path.stat().st_size} bytes)")
    return path


def _skip(rel: Path) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in rel.parts)


def flatten(extracted: Path, kind: str, dest: Path) -> MediaSet:
    """Move media of `kind` and their captions from a nested tree into the flat folder `dest`.

    A file keeps its name unless another file already took it; then its parent folders
    are prefixed (`a/b/x.jpg` -> `a_b_x.jpg`), and a counter as a last resort. The caption
    moves with its media under the same new stem.
    """
    dest.mkdir(parents=True, exist_ok=True)
    result = MediaSet(kind, dest)
    other_kind = "videos" if kind == "images" else "images"
    wrong_kind: list[str] = []
    files = sorted(p for p in extracted.rglob("*") if p.is_file() and not _skip(p.relative_to(extracted)))
    captions = {p.with_suffix("").as_posix(): p for p in files if p.suffix.lower() == ".txt"}
    taken = {p.stem.lower() for p in dest.iterdir()}
    for src in files:
        ext = src.suffix.lower()
        rel = src.relative_to(extracted)
        if ext == ".txt":
            continue
        if ext in KIND_EXTS[other_kind]:
            wrong_kind.append(rel.as_posix())
            continue
        if ext not in KIND_EXTS[kind]:
            result.ignored.append(rel.as_posix())
            continue
        stem = src.stem
        if stem.lower() in taken:
            stem = "_".join([*rel.parent.parts, src.stem]) or src.stem
            n = 1
            base = stem
            while stem.lower() in taken:
                n += 1
                stem = f"{base}_{n}"
        taken.add(stem.lower())
        target = dest / (stem + ext)
        shutil.move(src, target)
        result.media.append(target)
        caption = captions.get(src.with_suffix("").as_posix())
        if caption is not None:
            shutil.move(caption, dest / (stem + ".txt"))
        else:
            result.uncaptioned.append(target)
    if wrong_kind:
        raise JobError(
            "invalid_input",
            f"dataset.{kind}_url: contains {len(wrong_kind)} {other_kind[:-1]} file(s) ({_names(wrong_kind, 5)}); "
            f"put {other_kind} in {other_kind}_url with dataset type 'both' or 'precaptioned'",
        )
    if not result.media:
        found = _names(sorted({Path(n).suffix.lower() or n for n in result.ignored})) or "nothing"
        raise JobError(
            "invalid_input",
            f"dataset.{kind}_url: no {kind} found (accepted: {', '.join(sorted(KIND_EXTS[kind]))}; found: {found})",
        )
    return result


def check_images_open(media: MediaSet) -> None:
    """Pillow must recognise each image (the engine skips unreadable files without failing)."""
    from PIL import Image, UnidentifiedImageError

    bad, animated = [], []
    for path in media.media:
        try:
            with Image.open(path) as im:
                if getattr(im, "n_frames", 1) > 1:
                    animated.append(path.name)
                im.verify()
        except (UnidentifiedImageError, OSError, SyntaxError):
            bad.append(path.name)
    if bad:
        raise JobError("invalid_input", f"dataset.images_url: {len(bad)} image(s) cannot be read: {_names(bad)}",
                       bad[:_LIST_LIMIT])
    if animated:
        raise JobError("invalid_input", f"dataset.images_url: {len(animated)} animated image(s), which "
                                        f"diffusion-pipe rejects (send them as videos): {_names(animated)}",
                       animated[:_LIST_LIMIT])


def empty_captions(media: MediaSet) -> list[Path]:
    """Media whose caption file exists but holds only whitespace (the engine trains them captionless)."""
    out = []
    for p in media.media:
        if p in media.uncaptioned:
            continue
        if not p.with_suffix(".txt").read_text(encoding="utf-8", errors="replace").strip():
            out.append(p)
    return out


def prepare(url: str, kind: str, downloads: Path, dest: Path, *, precaptioned: bool, sha256: str | None = None,
            progress: Callable[..., None] | None = None, hf_token: str | None = None,
            stop: threading.Event | None = None) -> MediaSet:
    """Download + extract + flatten one archive into `dest`; the archive is removed afterwards.
    Setting `stop` (the job ended) ends the download and skips the extraction."""
    from common.archives import safe_extract

    archive = fetch_archive(url, kind, downloads, sha256=sha256, progress=progress, hf_token=hf_token, stop=stop)
    if stop is not None and stop.is_set():
        raise JobError("cancelled", f"dataset.{kind}_url: not extracted, the job ended")
    extracted = downloads / f"{kind}_extracted"
    if extracted.exists():
        shutil.rmtree(extracted)
    caps = settings.current()
    safe_extract(archive, extracted, max_members=caps.max_dataset_files, max_total_bytes=caps.max_dataset_bytes * 4)
    media = flatten(extracted, kind, dest)
    shutil.rmtree(extracted, ignore_errors=True)
    archive.unlink(missing_ok=True)
    if kind == "images":
        check_images_open(media)
    if precaptioned:
        missing = [p.name for p in media.uncaptioned]
        empty = [p.name for p in empty_captions(media)]
        problems = []
        if missing:
            problems.append(f"{len(missing)} without a caption file: {_names(missing)}")
        if empty:
            problems.append(f"{len(empty)} with an empty caption: {_names(empty)}")
        if problems:
            raise JobError(
                "invalid_input",
                f"dataset.{kind}_url: dataset type 'precaptioned' needs a non-empty same-name .txt for every file "
                f"(diffusion-pipe silently skips media without one); {'; '.join(problems)}",
                [*missing, *empty][:_LIST_LIMIT * 2],
            )
    else:
        media.uncaptioned.extend(empty_captions(media))
    return media


ENGINE_FPS = 16  # diffusion-pipe converts every video to 16 fps before bucketing


def video_info(path: Path) -> tuple[int, int, int]:
    """(width, height, frames the engine sees: the length at 16 fps) of a video; raises on an unreadable file."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.duration is not None and stream.time_base is not None:
            seconds = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            seconds = container.duration / 1_000_000
        else:
            seconds = (stream.frames or 0) / float(stream.average_rate or ENGINE_FPS)
        width, height = stream.codec_context.width, stream.codec_context.height
    return width, height, int(seconds * ENGINE_FPS)


def check_video_lengths(media: MediaSet, frame_buckets: list[int]) -> list[str]:
    """Refuse what the engine would drop or fail on; returns warnings for clips it will skip.

    A video goes to the longest frame bucket not longer than it (never bucket 1), so a clip
    shorter than the smallest video bucket is silently dropped by the engine.
    """
    try:
        import av  # noqa: F401  (in the image: diffusion-pipe needs it)
    except ImportError:
        return ["video lengths were not checked (PyAV is not installed)"]
    video_buckets = [b for b in frame_buckets if b > 1]
    if not video_buckets:
        raise JobError("invalid_input", "training.frame_buckets: videos need a bucket longer than 1 frame "
                                        f"(got {frame_buckets})")
    shortest = min(video_buckets)
    unreadable, short = [], []
    for path in media.media:
        try:
            frames = video_info(path)[2]
        except Exception:
            unreadable.append(path.name)
            continue
        if frames < shortest:
            short.append(f"{path.name} ({frames} frames)")
    if unreadable:
        raise JobError("invalid_input", f"dataset.videos_url: {len(unreadable)} video(s) cannot be read: "
                                        f"{_names(unreadable)}", unreadable[:_LIST_LIMIT])
    if short and len(short) == media.count:
        raise JobError("invalid_input", f"dataset.videos_url: every video is shorter than the smallest frame bucket "
                                        f"({shortest} frames at {ENGINE_FPS} fps): {_names(short)}; lower "
                                        "training.frame_buckets", short[:_LIST_LIMIT])
    return [f"shorter than {shortest} frames at {ENGINE_FPS} fps, the engine will skip: {_names(short)}"] if short else []
