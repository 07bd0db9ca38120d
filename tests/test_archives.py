"""common.archives on real zip / tar files built here, hostile ones included."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from common.archives import make_zip, safe_extract
from common.jobs import JobError

MB = 1 << 20


def _zip(path: Path, members: list[tuple[str | zipfile.ZipInfo, bytes]],
         compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def _zip_symlink(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # unix
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def _refused(archive: Path, dest: Path, **limits) -> JobError:
    with pytest.raises(JobError) as info:
        safe_extract(archive, dest, **limits)
    assert info.value.code == "unsafe_archive"
    return info.value


def _tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir())


DATASET = [
    ("photos/set1/a.png", b"\x89PNG-a"),
    ("photos/set1/a.txt", b"a caption"),
    ("photos/set2/deeper/b.jpg", b"\xff\xd8-b"),
    ("photos/set2/deeper/b.txt", b"b caption"),
    ("__MACOSX/photos/set1/._a.png", b"resource fork"),
    ("photos/.DS_Store", b"finder"),
    ("photos/set1/._a.png", b"apple double"),
    ("photos/.hidden/c.png", b"hidden folder"),
]


def test_dataset_zip_extracts_media_and_skips_mac_junk(tmp_path):
    archive = _zip(tmp_path / "dataset.zip", [(zipfile.ZipInfo("photos/set1/"), b"")] + DATASET)
    dest = tmp_path / "out"
    files = safe_extract(archive, dest)
    expected = ["photos/set1/a.png", "photos/set1/a.txt", "photos/set2/deeper/b.jpg", "photos/set2/deeper/b.txt"]
    assert sorted(p.relative_to(dest.resolve()).as_posix() for p in files) == expected
    assert _tree(dest) == expected
    assert (dest / "photos/set2/deeper/b.txt").read_bytes() == b"b caption"
    assert not (dest / "__MACOSX").exists()


@pytest.mark.parametrize("mode", ["w:gz", "w:bz2", "w:xz", "w"])
def test_tar_variants_are_detected_by_content(tmp_path, mode):
    archive = _tar(tmp_path / "dataset.bin", [(_member(n), d) for n, d in DATASET], mode=mode)  # no telling suffix
    dest = tmp_path / "out"
    files = safe_extract(archive, dest)
    assert len(files) == 4
    assert _tree(dest) == ["photos/set1/a.png", "photos/set1/a.txt", "photos/set2/deeper/b.jpg",
                           "photos/set2/deeper/b.txt"]


@pytest.mark.parametrize("content", [b"just some text, not an archive\n" * 10, b"<!doctype html><html>Sign in</html>", b""])
def test_non_archive_is_invalid_input(tmp_path, content):
    path = tmp_path / "dataset.zip"
    path.write_bytes(content)
    with pytest.raises(JobError) as info:
        safe_extract(path, tmp_path / "out")
    assert info.value.code == "invalid_input"
    assert "dataset.zip is not a zip or tar archive" in info.value.message


def test_truncated_zip_is_invalid_input(tmp_path):
    whole = _zip(tmp_path / "whole.zip", [("a.bin", os.urandom(100_000))]).read_bytes()
    cut = tmp_path / "cut.zip"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(JobError) as info:
        safe_extract(cut, tmp_path / "out")
    assert info.value.code == "invalid_input" and "corrupt or truncated" in info.value.message


@pytest.mark.parametrize("name, reason", [
    ("../evil.txt", "climbs out"),
    ("photos/../../evil.txt", "climbs out"),
    ("..\\evil.txt", "climbs out"),
    ("/tmp/abs-evil.txt", "absolute path"),
    ("C:\\Windows\\evil.txt", "absolute path"),
])
def test_zip_slip_and_absolute_paths_are_refused(tmp_path, name, reason):
    archive = _zip(tmp_path / "a.zip", [("ok/first.txt", b"fine"), (zipfile.ZipInfo(name), b"evil")])
    dest = tmp_path / "deep" / "out"
    err = _refused(archive, dest)
    assert name in err.message and reason in err.message
    assert _tree(tmp_path / "deep") == []  # the member written before the refusal is removed too
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/abs-evil.txt").exists()


def test_tar_slip_and_absolute_paths_are_refused(tmp_path):
    for name in ("../evil.txt", "/etc/cron.d/evil"):
        err = _refused(_tar(tmp_path / "a.tgz", [(_member("x/ok.txt"), b"ok"), (_member(name), b"evil")]),
                       tmp_path / "out")
        assert name in err.message
        assert _tree(tmp_path / "out") == []


@pytest.mark.parametrize("link, target", [("etc", "/etc"), ("photos/up", "../../outside"), ("up", "..")])
def test_tar_symlink_escapes_are_refused(tmp_path, link, target):
    archive = _tar(tmp_path / "a.tgz", [(_member(link, tarfile.SYMTYPE, target), None),
                                        (_member(f"{link}/passwd"), b"overwrite?")])
    err = _refused(archive, tmp_path / "out")
    assert link in err.message and target in err.message


def test_zip_symlink_entry_escape_is_refused(tmp_path):
    archive = _zip(tmp_path / "a.zip", [_zip_symlink("photos/link", "../../../etc/passwd")])
    err = _refused(archive, tmp_path / "out")
    assert "photos/link" in err.message and "outside" in err.message


def test_links_inside_dest_become_copies(tmp_path):
    archive = _tar(tmp_path / "a.tgz", [
        (_member("sub/real.txt"), b"real content"),
        (_member("alias.txt", tarfile.SYMTYPE, "sub/real.txt"), None),
        (_member("sub/hard.txt", tarfile.LNKTYPE, "sub/real.txt"), None),
        (_member("dirlink", tarfile.SYMTYPE, "sub"), None),
    ])
    dest = tmp_path / "out"
    safe_extract(archive, dest)
    for name in ("alias.txt", "sub/hard.txt"):
        assert not (dest / name).is_symlink() and (dest / name).read_bytes() == b"real content"
    assert not (dest / "dirlink").exists()  # a link to a folder is dropped, never created
    archive = _zip(tmp_path / "b.zip", [("a/real.txt", b"zip real"), _zip_symlink("a/alias.txt", "real.txt")])
    safe_extract(archive, tmp_path / "zout")
    assert (tmp_path / "zout/a/alias.txt").read_bytes() == b"zip real"
    assert not (tmp_path / "zout/a/alias.txt").is_symlink()


@pytest.mark.parametrize("target", ["../outside.txt", "/etc/passwd"])
def test_tar_hardlink_escape_is_refused(tmp_path, target):
    archive = _tar(tmp_path / "a.tgz", [(_member("h.txt", tarfile.LNKTYPE, target), None)])
    err = _refused(archive, tmp_path / "out")
    assert "h.txt" in err.message


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_device_files_and_fifos_in_tar_are_refused(tmp_path, kind):
    archive = _tar(tmp_path / "a.tar", [(_member("dev/zero-ish", kind), None)], mode="w")
    err = _refused(archive, tmp_path / "out")
    assert "dev/zero-ish" in err.message and ("device" in err.message)


def test_device_and_fifo_modes_in_zip_are_refused(tmp_path):
    for mode in (stat.S_IFCHR, stat.S_IFIFO):
        info = zipfile.ZipInfo("dev/thing")
        info.create_system = 3
        info.external_attr = (mode | 0o600) << 16
        err = _refused(_zip(tmp_path / "d.zip", [(info, b"")]), tmp_path / "out")
        assert "dev/thing" in err.message and "device" in err.message


def test_existing_symlink_in_dest_is_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "models").symlink_to(outside)
    err = _refused(_zip(tmp_path / "a.zip", [("models/x.bin", b"x")]), dest)
    assert "models/x.bin" in err.message
    assert list(outside.iterdir()) == []


def test_zip_bomb_by_compression_ratio(tmp_path):
    archive = _zip(tmp_path / "bomb.zip", [("zeros.bin", bytes(20 * MB))])
    assert archive.stat().st_size < 100_000
    err = _refused(archive, tmp_path / "out")
    assert "ratio" in err.message
    assert _tree(tmp_path / "out") == []


def test_tar_gz_bomb_is_stopped_while_writing(tmp_path):
    # tar headers carry no compressed sizes: the guard is the count of bytes actually written.
    archive = _tar(tmp_path / "bomb.tgz", [(_member("a.bin"), bytes(8 * MB)), (_member("b.bin"), bytes(8 * MB))])
    err = _refused(archive, tmp_path / "out")
    assert "a.bin" in err.message and "200x the archive's size" in err.message
    assert _tree(tmp_path / "out") == []


def test_total_size_cap(tmp_path):
    archive = _zip(tmp_path / "big.zip", [("a.bin", os.urandom(2 * MB))], zipfile.ZIP_STORED)
    err = _refused(archive, tmp_path / "out", max_total_bytes=MB)
    assert f"more than the limit of {MB} bytes" in err.message
    archive = _tar(tmp_path / "big.tar", [(_member(f"{i}.bin"), os.urandom(400_000)) for i in range(3)], mode="w")
    err = _refused(archive, tmp_path / "tout", max_total_bytes=MB)
    assert "2.bin" in err.message and _tree(tmp_path / "tout") == []


def test_zip_whose_header_understates_the_data_is_refused(tmp_path):
    data = os.urandom(100_000)
    raw = bytearray(_zip(tmp_path / "liar.zip", [("liar.bin", data)], zipfile.ZIP_STORED).read_bytes())
    central = raw.rindex(b"PK\x01\x02")
    raw[central + 20:central + 28] = (1000).to_bytes(4, "little") * 2  # compressed and uncompressed size
    (tmp_path / "liar.zip").write_bytes(raw)
    err = _refused(tmp_path / "liar.zip", tmp_path / "out")
    assert "liar.bin" in err.message and "does not match its header" in err.message


def test_too_many_members(tmp_path):
    members = [(f"f{i}.txt", b"x") for i in range(11)]
    err = _refused(_zip(tmp_path / "many.zip", members), tmp_path / "out", max_members=10)
    assert "more than 10 files" in err.message
    err = _refused(_tar(tmp_path / "many.tgz", [(_member(n), d) for n, d in members]), tmp_path / "tout",
                   max_members=10)
    assert "more than 10 files" in err.message and _tree(tmp_path / "tout") == []
    assert len(safe_extract(tmp_path / "many.zip", tmp_path / "ok", max_members=11)) == 11
    # Skipped entries count only against the backstop of three times the limit.
    junk = [(f"__MACOSX/._j{i}", b"") for i in range(30)]
    err = _refused(_zip(tmp_path / "junk.zip", members[:2] + junk), tmp_path / "jout", max_members=10)
    assert "more than 30 entries" in err.message


def test_macos_twins_do_not_count_against_the_file_limit(tmp_path):
    members = [(f"set/f{i}.png", b"x") for i in range(10)]
    twins = [(f"__MACOSX/set/._f{i}.png", b"") for i in range(10)]
    archive = _zip(tmp_path / "mac.zip", [(zipfile.ZipInfo("set/"), b"")] + members + twins)
    assert len(safe_extract(archive, tmp_path / "out", max_members=10)) == 10


# --- tar header bombs, long names, skipped members (issue 12, item 2) ------------------------------

def _header_bomb(path: Path, kind: bytes, body_bytes: int) -> Path:
    """A .tar.gz whose first member is a `kind` (GNU long name / pax) header of `body_bytes`,
    streamed so the test itself never holds it."""
    import gzip

    header = bytearray(512)
    header[0:13] = b"././@LongLink"
    header[100:108] = b"0000644\0"
    header[124:136] = f"{body_bytes:011o}\0".encode()
    header[136:148] = b"00000000000\0"
    header[156:157] = kind
    header[257:265] = b"ustar  \0"
    header[148:156] = b"        "
    header[148:156] = f"{sum(header):06o}\0 ".encode()
    line = b"a" * MB if kind in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK) else (b"%d path=" % MB) + b"a" * (MB - 12)
    with gzip.open(path, "wb", compresslevel=6) as out:
        out.write(bytes(header))
        for _ in range(body_bytes // MB):
            out.write(line[:MB])
        out.write(bytes(512 * 4))
    return path


@pytest.mark.parametrize("kind", [tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
                                  tarfile.XGLTYPE])
def test_tar_header_bomb_is_refused_before_it_is_read(tmp_path, kind):
    import tracemalloc

    archive = _header_bomb(tmp_path / "hdr.tgz", kind, 96 * MB)
    assert archive.stat().st_size < MB
    tracemalloc.start()
    try:
        err = _refused(archive, tmp_path / "out")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "header of" in err.message and len(err.message) < 200
    assert peak < 16 * MB  # tarfile alone would read the 96 MB header into one bytes object
    assert not (tmp_path / "out").exists() or _tree(tmp_path / "out") == []


@pytest.mark.parametrize("name", ["d" * 300 + "/x.png", ("deep/" * 900) + "x.png", "f" * 300 + ".png"])
def test_over_long_names_are_unsafe_with_a_short_message(tmp_path, name):
    archive = _tar(tmp_path / "long.tar", [(_member(name), b"x")], mode="w")
    err = _refused(archive, tmp_path / "out")
    assert "name too long" in err.message and len(err.message) < 300
    err = _refused(_zip(tmp_path / "long.zip", [(name, b"x")]), tmp_path / "zout")
    assert "name too long" in err.message and len(err.message) < 300


def test_gnu_sparse_maps_are_refused_before_they_are_read(tmp_path):
    # pax sparse 1.0: the member's data starts with a count of map entries that tarfile believes
    info = tarfile.TarInfo("GNUSparseFile.0/big.bin")
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "big.bin",
                        "GNU.sparse.realsize": "10"}
    data = b"100000000\n" + b"0\n" * (MB // 2)
    archive = _tar(tmp_path / "sparse.tar", [(info, data)], mode="w")
    err = _refused(archive, tmp_path / "out")
    assert "big.bin: GNU sparse file" in err.message
    # old GNU sparse ('S'), whose extension blocks chain on without a bound
    header = bytearray(tarfile.TarInfo("s.bin").tobuf(tarfile.GNU_FORMAT))
    header[156:157] = tarfile.GNUTYPE_SPARSE
    header[148:156] = b"        "
    header[148:156] = f"{sum(header):06o}\0 ".encode()
    (tmp_path / "s.tar").write_bytes(bytes(header) + bytes(1024))
    err = _refused(tmp_path / "s.tar", tmp_path / "sout")
    assert "s.bin: GNU sparse file" in err.message


def test_skipped_tar_members_count_against_the_caps(tmp_path):
    # a dotfile of zeros is skipped, but decompressing it is the cost a bomb is after
    archive = _tar(tmp_path / "junk.tgz", [(_member("__MACOSX/._big"), bytes(40 * MB)), (_member("a.png"), b"x")])
    err = _refused(archive, tmp_path / "out")
    assert "__MACOSX/._big" in err.message and "200x" in err.message
    archive = _tar(tmp_path / "junk.tar", [(_member(".hidden/big"), os.urandom(2 * MB)), (_member("a.png"), b"x")],
                   mode="w")
    err = _refused(archive, tmp_path / "tout", max_total_bytes=MB)
    assert ".hidden/big" in err.message
    err = _refused(archive, tmp_path / "sout", max_seconds=0)
    assert "longer than 0 s" in err.message


# --- make_zip ------------------------------------------------------------------------------------

def test_make_zip_stores_compressed_media_and_deflates_text(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    files = {
        "lora.safetensors": os.urandom(300_000),
        "sample.png": os.urandom(50_000),
        "clip.mp4": os.urandom(50_000),
        "notes.txt": b"epoch 1 loss 0.123\n" * 5000,
        "latents.raw": bytes(200_000),  # unknown kind that compresses: deflated
        "noise.raw2": os.urandom(200_000),  # unknown kind that does not: stored
    }
    for name, data in files.items():
        (src / name).write_bytes(data)
    out = make_zip([src / n for n in files], tmp_path / "out" / "result.zip")
    assert out == tmp_path / "out" / "result.zip" and not (tmp_path / "out" / "result.zip.partial").exists()
    with zipfile.ZipFile(out) as zf:
        kinds = {i.filename: i.compress_type for i in zf.infolist()}
        assert zf.testzip() is None
    assert kinds == {
        "lora.safetensors": zipfile.ZIP_STORED, "sample.png": zipfile.ZIP_STORED, "clip.mp4": zipfile.ZIP_STORED,
        "notes.txt": zipfile.ZIP_DEFLATED, "latents.raw": zipfile.ZIP_DEFLATED, "noise.raw2": zipfile.ZIP_STORED,
    }
    back = tmp_path / "back"
    safe_extract(out, back)
    assert {p.name: p.read_bytes() for p in back.iterdir()} == files


def test_make_zip_folders_arcnames_and_duplicates(tmp_path):
    for epoch in (1, 2):
        d = tmp_path / f"epoch{epoch}"
        (d / "sub").mkdir(parents=True)
        (d / "adapter_model.safetensors").write_bytes(b"w%d" % epoch)
        (d / "sub" / "config.json").write_text("{}")
    out = make_zip([tmp_path / "epoch1", tmp_path / "epoch2"], tmp_path / "all.zip", arcnames=["e1", "e2"])
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == ["e1/adapter_model.safetensors", "e1/sub/config.json",
                                         "e2/adapter_model.safetensors", "e2/sub/config.json"]
        assert zf.read("e2/adapter_model.safetensors") == b"w2"
    with pytest.raises(ValueError, match="adapter_model.safetensors"):
        make_zip([tmp_path / "epoch1/adapter_model.safetensors", tmp_path / "epoch2/adapter_model.safetensors"],
                 tmp_path / "dupe.zip")
    assert not (tmp_path / "dupe.zip").exists()


def test_make_zip_failure_leaves_nothing(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    with pytest.raises(FileNotFoundError):
        make_zip([tmp_path / "a.txt", tmp_path / "missing.txt"], tmp_path / "r.zip")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
