"""Model weights in the volume's shared models/ dir: marker, lock, atomic rename, resume, clear errors.

The real `huggingface_hub.snapshot_download` fetches from the Hub stand-in (tests/fakes/hf_hub.py).
"""

from __future__ import annotations

import threading

import pytest

from common.jobs import JobError
from handlers.diffusion_pipe_trainer import model_fetch
from handlers.diffusion_pipe_trainer.models import REGISTRY, Fetch
from tests.fakes.threaded_http import free_port

WEIGHTS = b"\x00safetensors-ish" * 64


def hub_repo(hub_server, name: str, files: dict[str, bytes], **flags) -> Fetch:
    """A public model repo on the stand-in, and the registry entry that fetches its weights and `sub/`."""
    repo_id = f"org/{name}"
    hub_server.state.repos[f"model:{repo_id}"] = {"private": False, "files": dict(files), "sha": "c" * 40, **flags}
    return Fetch(repo_id, f"{name}-dir", allow_patterns=("a.safetensors", "sub/*"),
                 required=("a.safetensors", "sub"))


def downloads(hub_server, item: Fetch) -> list[str]:
    return sorted(d.split(":", 1)[1] for d in hub_server.state.downloads if d.startswith(f"{item.repo_id}:"))


FILES = {"a.safetensors": WEIGHTS, "sub/b.json": b"{}", "other.bin": b"not asked for"}


def test_download_once_then_reuse(tmp_path, hub_server):
    item = hub_repo(hub_server, "once", FILES)
    target = model_fetch.ensure(tmp_path, item, token=hub_server.token)
    assert target == tmp_path / item.local_dir and (target / ".complete").read_text().strip() == item.repo_id
    assert (target / "a.safetensors").read_bytes() == WEIGHTS and (target / "sub" / "b.json").is_file()
    assert not (target / "other.bin").exists() and not (target / ".cache").exists()
    assert not (tmp_path / f"{item.local_dir}.partial").exists()
    assert downloads(hub_server, item) == ["a.safetensors", "sub/b.json"]
    model_fetch.ensure(tmp_path, item)
    assert downloads(hub_server, item) == ["a.safetensors", "sub/b.json"]  # complete: no request at all


def test_a_non_empty_folder_without_marker_is_downloaded_again(tmp_path, hub_server):
    item = hub_repo(hub_server, "half", FILES)
    (tmp_path / item.local_dir).mkdir()
    (tmp_path / item.local_dir / "a.safetensors").write_bytes(b"half")
    target = model_fetch.ensure(tmp_path, item)
    assert (target / "a.safetensors").read_bytes() == WEIGHTS and (target / ".complete").is_file()


def test_concurrent_workers_download_once(tmp_path, hub_server):
    item = hub_repo(hub_server, "shared", FILES)
    hub_server.state.resolve_delay_s = 0.3
    threads = [threading.Thread(target=model_fetch.ensure, args=(tmp_path, item)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert downloads(hub_server, item) == ["a.safetensors", "sub/b.json"]
    assert (tmp_path / item.local_dir / ".complete").is_file()


def test_incomplete_download_is_an_error_and_is_resumed_later(tmp_path, hub_server):
    item = hub_repo(hub_server, "partial", {"a.safetensors": WEIGHTS})  # "sub" is not there (yet)
    with pytest.raises(JobError) as ei:
        model_fetch.ensure(tmp_path, item)
    assert ei.value.code == "download_failed" and "missing sub" in ei.value.message
    partial = tmp_path / f"{item.local_dir}.partial"
    assert not (tmp_path / item.local_dir).exists() and (partial / "a.safetensors").exists()
    repo = hub_server.state.repos[f"model:{item.repo_id}"]
    repo["files"]["sub/b.json"], repo["sha"] = b"{}", "e" * 40  # the maintainers commit the missing folder
    target = model_fetch.ensure(tmp_path, item)
    assert (target / ".complete").is_file() and (target / "sub" / "b.json").is_file()
    assert downloads(hub_server, item) == ["a.safetensors", "sub/b.json"]  # the weights were not fetched twice


def test_gated_repo_error_says_what_to_do(tmp_path, hub_server):
    flux = REGISTRY["flux"].fetch[0]
    hub_server.state.repos[f"model:{flux.repo_id}"] = {"private": False, "gated": True, "sha": "d" * 40,
                                                       "files": {"flux1-dev.safetensors": WEIGHTS}}
    with pytest.raises(JobError) as ei:
        model_fetch.ensure(tmp_path, flux, token=hub_server.token)
    assert ei.value.code == "download_failed" and "licence" in ei.value.message
    assert "black-forest-labs/FLUX.1-dev" in ei.value.message


def test_missing_repo_is_named(tmp_path, hub_server):
    item = Fetch("org/does-not-exist", "nothing", required=("a.safetensors",))
    with pytest.raises(JobError) as ei:
        model_fetch.ensure(tmp_path, item, token=hub_server.token)
    assert ei.value.code == "download_failed"
    assert ei.value.message == "org/does-not-exist was not found or the token cannot read it"


def test_unreachable_hub_is_a_download_error_not_a_crash(tmp_path, hub_server, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    item = Fetch("org/anything", "anything", required=("a.safetensors",))
    with pytest.raises(JobError) as ei:
        model_fetch.ensure(tmp_path, item)
    assert ei.value.code == "download_failed" and ei.value.message.startswith("downloading org/anything failed: ")
    assert "the next attempt resumes it" in ei.value.message


def test_registry_paths_are_inside_the_fetched_folders():
    """Every path the [model] table names lies in a folder the registry downloads, as a required file."""
    for spec in REGISTRY.values():
        required = {f"{f.local_dir}/{r}" for f in spec.fetch for r in f.required} | {f.local_dir for f in spec.fetch}
        text = repr(spec.model_table)
        for chunk in text.split("{models}/")[1:]:
            path = chunk.split("'")[0]
            assert path in required, (spec.model_type, path)
