"""Model weights in the volume's shared models/ dir: marker, lock, atomic rename, resume, clear errors.

`huggingface_hub.snapshot_download` is replaced by a recorder that writes files the way it
does into `local_dir` (the Hub stand-in has no repo-info route for the real one).
"""

from __future__ import annotations

import threading
import time

import pytest

from common.jobs import JobError
from handlers.diffusion_pipe_trainer import model_fetch
from handlers.diffusion_pipe_trainer.models import REGISTRY, Fetch

ITEM = Fetch("org/model", "model-dir", allow_patterns=("a.safetensors", "sub/*"), required=("a.safetensors", "sub"))


class FakeSnapshot:
    def __init__(self, files=("a.safetensors", "sub/b.json"), fail: Exception | None = None, delay: float = 0.0):
        self.files, self.fail, self.delay = files, fail, delay
        self.calls: list[dict] = []

    def __call__(self, *, repo_id, local_dir, allow_patterns=None, ignore_patterns=None, token=None):
        self.calls.append({"repo_id": repo_id, "local_dir": local_dir, "allow_patterns": allow_patterns,
                           "token": token})
        time.sleep(self.delay)
        from pathlib import Path

        for f in self.files:
            p = Path(local_dir) / f
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"w")
        if self.fail:
            raise self.fail
        return local_dir


@pytest.fixture
def snapshot(monkeypatch):
    import huggingface_hub

    fake = FakeSnapshot()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    return fake


def test_download_once_then_reuse(tmp_path, snapshot):
    target = model_fetch.ensure(tmp_path, ITEM, token="hf_x")
    assert target == tmp_path / "model-dir" and (target / ".complete").is_file()
    assert (target / "a.safetensors").is_file() and not (tmp_path / "model-dir.partial").exists()
    assert snapshot.calls[0]["local_dir"] == str(tmp_path / "model-dir.partial")
    assert snapshot.calls[0]["allow_patterns"] == ["a.safetensors", "sub/*"] and snapshot.calls[0]["token"] == "hf_x"
    model_fetch.ensure(tmp_path, ITEM)
    assert len(snapshot.calls) == 1


def test_a_non_empty_folder_without_marker_is_not_downloaded(tmp_path, snapshot):
    (tmp_path / "model-dir").mkdir()
    (tmp_path / "model-dir" / "a.safetensors").write_bytes(b"half")
    model_fetch.ensure(tmp_path, ITEM)
    assert len(snapshot.calls) == 1 and (tmp_path / "model-dir" / ".complete").is_file()


def test_concurrent_workers_download_once(tmp_path, monkeypatch):
    import huggingface_hub

    slow = FakeSnapshot(delay=0.5)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", slow)
    threads = [threading.Thread(target=model_fetch.ensure, args=(tmp_path, ITEM)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(slow.calls) == 1 and (tmp_path / "model-dir" / ".complete").is_file()


def test_incomplete_download_is_an_error_and_is_resumed_later(tmp_path, monkeypatch):
    import huggingface_hub

    partial = FakeSnapshot(files=("a.safetensors",))  # "sub" missing
    monkeypatch.setattr(huggingface_hub, "snapshot_download", partial)
    with pytest.raises(JobError) as ei:
        model_fetch.ensure(tmp_path, ITEM)
    assert ei.value.code == "download_failed" and "missing sub" in ei.value.message
    assert not (tmp_path / "model-dir").exists() and (tmp_path / "model-dir.partial" / "a.safetensors").exists()
    full = FakeSnapshot()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", full)
    model_fetch.ensure(tmp_path, ITEM)
    assert full.calls[0]["local_dir"] == str(tmp_path / "model-dir.partial")  # same folder: hf resumes there
    assert (tmp_path / "model-dir" / ".complete").is_file()


def test_gated_repo_error_says_what_to_do(tmp_path, monkeypatch):
    import huggingface_hub
    import requests
    from huggingface_hub.errors import GatedRepoError

    resp = requests.Response()
    resp.status_code = 403
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        FakeSnapshot(files=(), fail=GatedRepoError("gated", response=resp)))
    with pytest.raises(JobError) as ei:
        model_fetch.ensure(tmp_path, REGISTRY["flux"].fetch[0], token="hf_x")
    assert ei.value.code == "download_failed" and "licence" in ei.value.message
    assert "black-forest-labs/FLUX.1-dev" in ei.value.message


def test_registry_paths_are_inside_the_fetched_folders():
    """Every path the [model] table names lies in a folder the registry downloads, as a required file."""
    for spec in REGISTRY.values():
        required = {f"{f.local_dir}/{r}" for f in spec.fetch for r in f.required} | {f.local_dir for f in spec.fetch}
        text = repr(spec.model_table)
        for chunk in text.split("{models}/")[1:]:
            path = chunk.split("'")[0]
            assert path in required, (spec.model_type, path)
