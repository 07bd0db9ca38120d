"""`SWARM_MODEL_MANIFEST` read and fetched through the shared flat manifest (`common.model_manifest`,
`common.model_files`): what the swarm worker gained and what it kept."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest

from common.jobs import JobError
from handlers.swarm_worker.manifest import fetch_models, load_manifest
from tests.fakes.http_files import FileServer, Route

KB = 1024


@pytest.fixture
def files(monkeypatch):
    monkeypatch.setenv("ALLOW_PRIVATE_NETWORK", "1")
    with FileServer() as server:
        monkeypatch.setenv("GCS_PUBLIC_URL", server.url("/gcs").rstrip("/"))
        monkeypatch.delenv("GCS_OAUTH_TOKEN", raising=False)
        yield server


def test_every_problem_is_named_before_any_download():
    with pytest.raises(JobError) as err:
        load_manifest('{"models": [{"url": "https://h/a.gguf", "folder": "x", "sha265": "' + "a" * 64 + '"},'
                      '{"url": "https://h/", "folder": "y"},'
                      '{"url": "ftp://h/b.gguf", "folder": "z"}]}')
    assert err.value.code == "invalid_input"
    text = str(err.value)
    assert text.startswith("invalid_input: SWARM_MODEL_MANIFEST: ")
    assert "models[0].sha265: Extra inputs are not permitted" in text  # a misspelt key does not skip the check
    assert "models[1]: no file name in the source" in text               # was found only at fetch time
    assert "models[2]: url: unsupported scheme 'ftp'" in text
    with pytest.raises(JobError, match="not valid JSON"):
        load_manifest("[{")


def test_manifest_file_with_gs_and_sized_entries(files, tmp_path, caplog):
    high, depth = os.urandom(64 * KB), os.urandom(20 * KB)
    files.add("/r2/wan22_high.gguf", Route(high))
    files.add("/gcs/bucket/depth.safetensors", Route(depth))
    manifest = tmp_path / "manifest.json"
    manifest.write_text(
        f'[{{"url": "{files.url("/r2/wan22_high.gguf")}", "folder": "diffusion_models/Wan", '
        f'"sha256": "{hashlib.sha256(high).hexdigest()}", "note": "high noise"}},'
        f'{{"url": "gs://bucket/depth.safetensors", "path": "controlnet/depth.safetensors", "size": {len(depth)}}}]')
    root = tmp_path / "Models"
    records = fetch_models(load_manifest(str(manifest)), root)
    assert [(r["status"], r["path"]) for r in records] == [
        ("fetched", str(root / "diffusion_models/Wan/wan22_high.gguf")),
        ("fetched", str(root / "controlnet/depth.safetensors"))]
    assert (root / "controlnet/depth.safetensors").read_bytes() == depth

    # a second start keeps what is there without reading it again (a corrupted file included)
    (root / "diffusion_models/Wan/wan22_high.gguf").write_bytes(bytes(len(high)))
    with caplog.at_level(logging.INFO, logger="swarm.manifest"):
        again = fetch_models(load_manifest(str(manifest)), root)
    assert [r["status"] for r in again] == ["present", "present"]
    assert "model present, skipped: " + str(root / "diffusion_models/Wan/wan22_high.gguf") in caplog.text
    assert len(files.seen("/r2/wan22_high.gguf")) == 1


def test_a_file_larger_than_its_size_or_the_cap_is_refused(files, tmp_path):
    data = os.urandom(30 * KB)
    files.add("/big.gguf", Route(data))
    sized = load_manifest(f'[{{"url": "{files.url("/big.gguf")}", "folder": "a", "size": {10 * KB}}}]')
    with pytest.raises(JobError):
        fetch_models(sized, tmp_path)
    unsized = load_manifest(f'[{{"url": "{files.url("/big.gguf")}", "folder": "a"}}]')
    with pytest.raises(JobError):
        fetch_models(unsized, tmp_path, max_bytes=10 * KB)
    assert not (tmp_path / "a/big.gguf").exists()
    assert fetch_models(unsized, tmp_path)[0]["bytes"] == len(data)
    assert Path(tmp_path / "a/big.gguf").read_bytes() == data
