"""common.volumes: which volume the worker is on, and job ids as folder names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from common import volumes
from common.jobs import JobError
from common.uploads import upload
from handlers.diffusion_pipe_trainer import settings, workspace


@pytest.mark.parametrize("job_id, expected", [
    ("sync-1a2b3c-u1", "sync-1a2b3c-u1"), ("local_test", "local_test"), ("a.b_c-9", "a.b_c-9"),
    ("..", None), ("../../etc", "etc"), ("a/b c", "a_b_c"), (".hidden", "hidden"), ("x" * 300, "x" * 128),
    ("", None), (None, None), ("ü", None), ("-rf", "rf"),
])
def test_safe_job_id(job_id, expected):
    got = volumes.safe_job_id(job_id)
    if expected is None:
        assert re.fullmatch(r"job-[0-9a-f]{12}", got)
    else:
        assert got == expected
    assert "/" not in got and got not in (".", "..") and not got.startswith(".")


def test_volume_root(monkeypatch, tmp_path):
    monkeypatch.setattr(volumes, "RUNPOD_VOLUME", tmp_path / "runpod-volume")
    monkeypatch.setattr(volumes, "POD_VOLUME", tmp_path / "workspace")
    monkeypatch.delenv("VOLUME_DIR", raising=False)
    (tmp_path / "workspace").mkdir()
    assert volumes.volume_root() is None  # a plain /workspace folder (the images make one) is no volume
    monkeypatch.setattr(volumes, "POD_VOLUME", Path("/"))  # a mount point
    assert volumes.volume_root() == Path("/")
    (tmp_path / "runpod-volume").mkdir()
    assert volumes.volume_root() == tmp_path / "runpod-volume"
    monkeypatch.setenv("VOLUME_DIR", str(tmp_path / "named"))
    assert volumes.volume_root() == tmp_path / "named"
    assert volumes.volume_root(tmp_path / "set") == tmp_path / "set"  # a settings object's VOLUME_DIR


def test_on_volume(monkeypatch, tmp_path):
    """One test for "are these files kept": under the volume root, not a look at the path's spelling."""
    monkeypatch.setattr(volumes, "RUNPOD_VOLUME", tmp_path / "runpod-volume")
    monkeypatch.setattr(volumes, "POD_VOLUME", tmp_path / "workspace")
    monkeypatch.delenv("VOLUME_DIR", raising=False)
    (tmp_path / "workspace" / "outputs").mkdir(parents=True)
    assert not volumes.on_volume(tmp_path / "workspace" / "outputs")  # a plain folder: lost with the container
    (tmp_path / "runpod-volume").mkdir()
    assert volumes.on_volume(tmp_path / "runpod-volume" / "outputs")
    assert not volumes.on_volume(tmp_path / "runpod-volume-2" / "outputs")  # a prefix is not a parent
    assert not volumes.on_volume(tmp_path / "runpod-volume" / ".." / "elsewhere")


def test_trainer_works_on_the_volume(monkeypatch, tmp_path):
    monkeypatch.delenv("DIFFUSION_PIPE_WORKING_DIR", raising=False)
    monkeypatch.setenv("VOLUME_DIR", str(tmp_path))
    assert workspace.working_root() == tmp_path / settings.WORKING_FOLDER
    assert workspace.job_dirs("../other", tmp_path).job == tmp_path / "jobs" / "other"


def test_upload_keeps_files_inside_the_volume_whatever_the_job_id(litterbox_server, transfer_sh_server, tmp_path):
    litterbox_server.state.mode = transfer_sh_server.state.mode = "500"
    volume = tmp_path / "volume" / "outputs"
    out = tmp_path / "out.png"
    out.write_bytes(b"png")
    with pytest.raises(JobError):
        upload([out], None, job_id="../../escaped", volume_dir=volume)
    assert (volume / "escaped" / "out.png").read_bytes() == b"png"
    assert not (tmp_path / "escaped").exists()


def test_controlnet_keeps_uploaded_images_on_the_volume_under_the_job_id(cn_engine, put_server, monkeypatch,
                                                                         tmp_path):
    """controlnet-pyworker asks `volume_root` (its settings' VOLUME_DIR, else the environment's) and names the
    folder with `safe_job_id`: a job id with a slash keeps its name, made safe, as in the trainer's folders."""
    from handlers.controlnet_pyworker import service
    from tests.controlnet_fixtures import body

    monkeypatch.setenv("VOLUME_DIR", str(tmp_path / "vol"))
    spec = {"upload_url": put_server.url("cn.png")}
    out = service.respond({"id": "batch/7 a", "input": body(steps=1, output=spec)}, cn_engine)
    kept = tmp_path / "vol" / "controlnet-outputs" / "batch_7_a" / "batch_7_a_0.png"
    assert out["upload"]["network_volume_path"] == str(kept.parent)
    assert kept.read_bytes() == put_server.received["/bucket/cn.png"]
