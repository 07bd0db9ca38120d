"""Safe extraction of user-supplied zip / tar archives, and zip creation for job outputs.

`safe_extract` treats every archive as hostile:
- the format is taken from the content (zip, or tar plain / gzip / bzip2 / xz), not the name;
- member paths that are absolute or climb out with `..` are refused, and so are links (tar
  symlinks and hardlinks, zip entries with the symlink mode) whose target lies outside `dest`,
  device files, fifos and sockets; refusals are `JobError("unsafe_archive", "<member>: ...")`
  and remove whatever this call had already written;
- links that stay inside `dest` are materialised as copies of their target file: no link is
  ever created on disk, so nothing can be written through one;
- bombs: too many files, declared sizes (zip central directory) over the total cap or over the
  compression ratio, and, because headers can lie, the bytes actually written are counted
  against the same caps while extracting;
- tar long-name and pax headers (`L`, `K`, `x`, `g`, `X`) over `MAX_TAR_HEADER_BYTES`, and GNU sparse
  maps, are refused before `tarfile` reads them into memory (a 0.4 MB .tar.gz can hold a 400 MB
  header; a sparse map has no bound at all);
- names longer than the filesystem allows are refused with a shortened name in the message;
- `__MACOSX/` and dotfiles (`.DS_Store`, `._foo`, dot-folders) are skipped, but the bytes of a
  skipped tar member are still read, so they count against the byte, ratio and time caps.

`make_zip` stores already-compressed files (weights, images, video, archives) with ZIP_STORED
and deflates the rest: deflating a multi-GB safetensors costs minutes for a few percent.
"""

from __future__ import annotations

import logging
import lzma
import os
import re
import shutil
import stat
import tarfile
import time
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from common.jobs import JobError

log = logging.getLogger("archives")

GiB = 1 << 30
CHUNK_BYTES = 1 << 20
RATIO_FLOOR_BYTES = 1 << 20  # ratios are judged only past this many bytes (tiny text compresses well)
_LINK_TARGET_MAX = 4096
MAX_TAR_HEADER_BYTES = 8 << 10  # a GNU long name / pax header; real ones hold a path and a few attributes
MAX_NAME_BYTES = 255  # one path component (NAME_MAX on Linux filesystems)
MAX_PATH_BYTES = 4000  # the whole path under dest (PATH_MAX is 4096)
_SHOWN_NAME_CHARS = 120

STORED_SUFFIXES = frozenset(
    ".safetensors .ckpt .pt .pth .bin .gguf .onnx .npz .png .jpg .jpeg .webp .gif .avif .heic .heif .jxl"
    " .mp4 .webm .mkv .mov .avi .m4v .mp3 .m4a .aac .ogg .opus .flac .zip .gz .tgz .bz2 .xz .zst .7z .rar"
    " .br .lz4".split()
)
DEFLATED_SUFFIXES = frozenset(
    ".txt .json .jsonl .toml .yaml .yml .csv .tsv .log .md .py .sh .html .xml .srt .vtt .svg .ini .cfg".split()
)

_BROKEN = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError)


def _shown(name: str) -> str:
    """A member name fit for a message: long names are cut in the middle."""
    if len(name) <= _SHOWN_NAME_CHARS:
        return name
    return f"{name[:80]}...[{len(name) - 110} characters]...{name[-30:]}"


def _unsafe(name: str, reason: str) -> JobError:
    return JobError("unsafe_archive", f"{_shown(name)}: {reason}")


_EXTENDED_HEADERS = {
    tarfile.GNUTYPE_LONGNAME: "GNU long-name",
    tarfile.GNUTYPE_LONGLINK: "GNU long-link",
    tarfile.XHDTYPE: "pax",
    tarfile.XGLTYPE: "pax global",
    tarfile.SOLARIS_XHDTYPE: "Solaris extended",
}


class _BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses an oversized extended header, and GNU sparse maps, before reading them.

    CPython reads an extended header's whole body into memory in one call (Lib/tarfile.py, 3.11:
    `TarInfo._proc_gnulong` and `_proc_pax`, `tarfile.fileobj.read(self._block(self.size))`), during
    `tarfile.open` itself; `_proc_member` is the hook its comments name for subclasses. Its GNU sparse
    readers collect a map of any length (`_proc_sparse` follows `isextended` blocks, `_proc_gnusparse_10`
    reads the count of entries the data claims) and fail with IndexError / ValueError at the end of the
    stream; a dataset never holds sparse files, so they are refused.
    """

    def _proc_member(self, tf):
        kind = _EXTENDED_HEADERS.get(self.type)
        if kind and self.size > MAX_TAR_HEADER_BYTES:
            raise JobError("unsafe_archive", f"a tar {kind} header of {self.size} bytes "
                                             f"(over the limit of {MAX_TAR_HEADER_BYTES} bytes)")
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise _unsafe(self.name, "GNU sparse file (not supported)")
        return super()._proc_member(tf)

    def _proc_gnusparse_10(self, next, pax_headers, tf):
        raise _unsafe(pax_headers.get("GNU.sparse.name") or next.name, "GNU sparse file (not supported)")


def _open_tar(path: Path) -> tarfile.TarFile:
    return tarfile.open(path, "r:*", tarinfo=_BoundedTarInfo)


def _member_path(name: str) -> PurePosixPath | None:
    """The member's path relative to dest; None when it is skipped. Refuses escapes."""
    clean = name.replace("\\", "/")
    if "\x00" in clean:
        raise _unsafe(name, "NUL byte in the member name")
    if clean.startswith("/") or re.match(r"[A-Za-z]:", clean):
        raise _unsafe(name, "absolute path")
    parts = [p for p in clean.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _unsafe(name, "path climbs out of the destination with '..'")
    if len(clean.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES or any(
            len(p.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES for p in parts):
        raise _unsafe(name, f"name too long (over {MAX_NAME_BYTES} bytes per folder or file name, "
                            f"{MAX_PATH_BYTES} in all)")
    if not parts or any(p == "__MACOSX" or p.startswith(".") for p in parts):
        return None
    return PurePosixPath(*parts)


def _link_target(name: str, rel: PurePosixPath, target: str, *, hard: bool) -> PurePosixPath:
    """Where a link points, relative to dest; refused when that is outside dest."""
    clean = target.replace("\\", "/")
    if clean.startswith("/") or re.match(r"[A-Za-z]:", clean):
        raise _unsafe(name, f"link to an absolute path ({_shown(target)})")
    parts = [] if hard else list(rel.parent.parts)  # hardlink targets are archive paths
    for part in clean.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise _unsafe(name, f"link points outside the destination ({_shown(target)})")
            parts.pop()
        else:
            parts.append(part)
    return PurePosixPath(*parts)


class _Extraction:
    """Writes members under dest while counting bytes; undoes its own writes on failure."""

    def __init__(self, archive: Path, dest: Path, max_total_bytes: int, max_ratio: float, max_seconds: float):
        self.archive = archive
        self.max_seconds = max_seconds
        self.deadline = time.monotonic() + max_seconds
        self.dest = dest.resolve()
        self.max_total = max_total_bytes
        self.max_ratio = max_ratio
        self.archive_size = max(archive.stat().st_size, 1)
        self.written = 0
        self.files: list[Path] = []
        self.created_dirs: list[Path] = []
        self.links: list[tuple[str, PurePosixPath, PurePosixPath]] = []

    def count(self, name: str, n: int) -> None:
        self.written += n
        if self.written > self.max_total:
            raise _unsafe(name, f"extracting would write more than {self.max_total} bytes")
        if self.written > RATIO_FLOOR_BYTES and self.written > self.max_ratio * self.archive_size:
            raise _unsafe(name, f"expands to more than {self.max_ratio:g}x the archive's size (a zip bomb?)")
        if time.monotonic() > self.deadline:
            raise _unsafe(name, f"extracting took longer than {self.max_seconds:g} s")

    def skip(self, name: str, src) -> None:
        """Read a skipped member through: its bytes cost decompression time like any other."""
        while chunk := src.read(CHUNK_BYTES):
            self.count(name, len(chunk))

    def _path(self, name: str, rel: PurePosixPath) -> Path:
        path = self.dest.joinpath(*rel.parts)
        parent = path.parent
        missing = []
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        for d in reversed(missing):
            d.mkdir()
            self.created_dirs.append(d)
        if not Path(os.path.realpath(path.parent)).is_relative_to(self.dest):
            raise _unsafe(name, "path leads outside the destination through an existing link")
        return path

    def mkdir(self, name: str, rel: PurePosixPath) -> None:
        path = self._path(name, rel)
        if path.exists() and not path.is_dir():
            raise _unsafe(name, "a file and a folder share this name")
        if not path.is_dir():
            path.mkdir()
            self.created_dirs.append(path)

    def write(self, name: str, rel: PurePosixPath, src, declared: int | None = None) -> None:
        path = self._path(name, rel)
        if path.is_dir():
            raise _unsafe(name, "a file and a folder share this name")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:
            raise _unsafe(name, f"cannot be written ({exc.strerror})") from None
        self.files.append(path)
        member_bytes = 0
        with os.fdopen(fd, "wb") as out:
            while chunk := src.read(CHUNK_BYTES):
                member_bytes += len(chunk)
                if declared is not None and member_bytes > declared:
                    raise _unsafe(name, f"holds more data than the {declared} bytes its header declares")
                self.count(name, len(chunk))
                out.write(chunk)

    def materialise_links(self) -> None:
        by_rel = {p.relative_to(self.dest).as_posix(): p for p in self.files}
        for name, rel, target in self.links:
            source = by_rel.get(target.as_posix())
            if source is None or not source.is_file():
                log.warning("archive %s: link %s -> %s skipped (not a file in the archive)",
                            self.archive.name, name, target)
                continue
            with open(source, "rb") as src:
                self.write(name, rel, src)
            by_rel[rel.as_posix()] = self.files[-1]

    def undo(self) -> None:
        for path in self.files:
            path.unlink(missing_ok=True)
        for d in reversed(self.created_dirs):
            try:
                d.rmdir()
            except OSError:
                pass


def _check_count(archive: Path, entries: int, files: int, max_members: int) -> None:
    """`max_members` caps the files (and links) extracted; skipped and folder entries (a macOS
    zip holds a `__MACOSX/._x` twin of every file) may take it to three times that in all."""
    if files > max_members:
        raise JobError("unsafe_archive", f"{archive.name}: more than {max_members} files")
    if entries > 3 * max_members:
        raise JobError("unsafe_archive", f"{archive.name}: more than {3 * max_members} entries")


def _extract_zip(archive: Path, job: _Extraction, max_members: int) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        files = sum(1 for i in infos if not i.is_dir() and _member_path(i.filename) is not None)
        _check_count(archive, len(infos), files, max_members)
        declared = sum(i.file_size for i in infos)
        if declared > job.max_total:
            raise JobError("unsafe_archive", f"{archive.name}: declares {declared} bytes, more than the "
                                             f"limit of {job.max_total} bytes")
        if declared > RATIO_FLOOR_BYTES and declared > job.max_ratio * job.archive_size:
            raise JobError("unsafe_archive", f"{archive.name}: declares {declared} bytes from "
                                             f"{job.archive_size}, over the {job.max_ratio:g}:1 ratio limit")
        for info in infos:
            rel = _member_path(info.filename)
            mode = info.external_attr >> 16
            if rel is None:
                continue
            if info.is_dir() or stat.S_ISDIR(mode):
                job.mkdir(info.filename, rel)
            elif stat.S_ISLNK(mode):
                if info.file_size > _LINK_TARGET_MAX:
                    raise _unsafe(info.filename, "symlink target is too long")
                target = zf.read(info).decode("utf-8", "replace")
                job.links.append((info.filename, rel, _link_target(info.filename, rel, target, hard=False)))
            elif stat.S_IFMT(mode) not in (0, stat.S_IFREG):
                raise _unsafe(info.filename, "device file, fifo or socket")
            else:
                if info.file_size > RATIO_FLOOR_BYTES and info.file_size > job.max_ratio * max(info.compress_size, 1):
                    ratio = info.file_size / max(info.compress_size, 1)
                    raise _unsafe(info.filename, f"compression ratio {ratio:.0f}:1 is over the limit of "
                                                 f"{job.max_ratio:g}:1 (a zip bomb?)")
                try:
                    with zf.open(info) as src:
                        job.write(info.filename, rel, src, declared=info.file_size)
                except zipfile.BadZipFile as exc:
                    raise _unsafe(info.filename, f"data does not match its header ({exc})") from None
                except (RuntimeError, NotImplementedError) as exc:  # encrypted / unknown compression
                    raise JobError("invalid_input", f"{_shown(info.filename)}: cannot be extracted ({exc})") from None


def _extract_tar(archive: Path, job: _Extraction, max_members: int) -> None:
    with _open_tar(archive) as tf:
        files = 0
        for entries, member in enumerate(tf, start=1):
            rel = _member_path(member.name)
            files += rel is not None and not member.isdir()
            _check_count(archive, entries, files, max_members)
            if member.isreg() and job.written + member.size > job.max_total:
                raise _unsafe(member.name, f"extracting would write more than {job.max_total} bytes")
            if rel is None:
                if member.isreg():
                    job.skip(member.name, tf.extractfile(member))
                continue
            if member.isdir():
                job.mkdir(member.name, rel)
            elif member.isreg():
                job.write(member.name, rel, tf.extractfile(member))
            elif member.issym() or member.islnk():
                target = _link_target(member.name, rel, member.linkname, hard=member.islnk())
                job.links.append((member.name, rel, target))
            elif member.ischr() or member.isblk() or member.isfifo():
                raise _unsafe(member.name, "device file or fifo")
            else:
                raise _unsafe(member.name, f"unsupported member type {member.type!r}")


def archive_kind(path: Path) -> str | None:
    """'zip' or 'tar' from the file's content (tar may be gzip / bzip2 / xz compressed)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    try:
        with _open_tar(path):
            return "tar"
    except (*_BROKEN, OSError):
        pass
    return "zip" if zipfile.is_zipfile(path) else None


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike, *, max_members: int = 10_000,
                 max_total_bytes: int = 20 * GiB, max_ratio: float = 200,
                 max_seconds: float = 3600) -> list[Path]:
    """Extract a zip or tar archive into `dest`; returns the extracted files (see module docstring)."""
    archive, dest = Path(archive), Path(dest)
    kind = archive_kind(archive)
    if kind is None:
        raise JobError("invalid_input", f"{archive.name} is not a zip or tar archive")
    dest.mkdir(parents=True, exist_ok=True)
    job = _Extraction(archive, dest, max_total_bytes, max_ratio, max_seconds)
    try:
        (_extract_zip if kind == "zip" else _extract_tar)(archive, job, max_members)
        job.materialise_links()
    except JobError:
        job.undo()
        raise
    except _BROKEN as exc:
        job.undo()
        raise JobError("invalid_input", f"{archive.name} is a corrupt or truncated {kind} archive ({exc})") from None
    except BaseException:
        job.undo()
        raise
    log.info("extracted %d files (%d bytes) from %s", len(job.files), job.written, archive.name)
    return list(dict.fromkeys(job.files))


def _compression(path: Path) -> int:
    suffix = path.suffix.lower()
    if suffix in STORED_SUFFIXES:
        return zipfile.ZIP_STORED
    if suffix in DEFLATED_SUFFIXES:
        return zipfile.ZIP_DEFLATED
    with open(path, "rb") as f:  # unknown kind: deflate only if a sample shrinks by 10% or more
        sample = f.read(256 << 10)
    return zipfile.ZIP_DEFLATED if len(zlib.compress(sample, 1)) < 0.9 * len(sample) else zipfile.ZIP_STORED


def _entries(paths: Sequence[str | os.PathLike], arcnames: Sequence[str] | None) -> list[tuple[Path, str]]:
    if arcnames is not None and len(arcnames) != len(paths):
        raise ValueError("make_zip: arcnames must have one name per path")
    entries = []
    for i, p in enumerate(paths):
        path = Path(p)
        name = arcnames[i] if arcnames is not None else path.name
        if path.is_dir():
            entries += [(f, f"{name}/{f.relative_to(path).as_posix()}") for f in sorted(path.rglob("*")) if f.is_file()]
        else:
            entries.append((path, name))
    names = [n for _, n in entries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"make_zip: several files would be stored as {', '.join(dupes)}; pass arcnames")
    for name in names:
        if name.startswith("/") or ".." in name.split("/"):
            raise ValueError(f"make_zip: unsafe name in archive {name!r}")
    return entries


def make_zip(paths: Sequence[str | os.PathLike], dest: str | os.PathLike, *,
             arcnames: Sequence[str] | None = None) -> Path:
    """Zip files (folders recursively) into `dest`, written to `<dest>.partial` and then renamed.

    Names in the zip are the files' names (a folder keeps its name as prefix) unless `arcnames`
    gives one per path. Zip64 is used where sizes need it.
    """
    dest = Path(dest)
    entries = _entries(paths, arcnames)
    partial = dest.with_name(dest.name + ".partial")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(partial, "w", allowZip64=True) as zf:
            for path, name in entries:
                info = zipfile.ZipInfo.from_file(path, name, strict_timestamps=False)
                info.compress_type = _compression(path)
                with open(path, "rb") as src, zf.open(info, "w") as out:
                    shutil.copyfileobj(src, out, CHUNK_BYTES)
        os.replace(partial, dest)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return dest
