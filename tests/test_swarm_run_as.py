"""SwarmUI (and so ComfyUI and its custom nodes) under a uid of its own (SWARMUI_RUN_AS): it cannot read
the worker's environment, and it can still write its folders and the volume's model folders."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from tests.swarm_helpers import call, configured_worker

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="starting SwarmUI under another uid needs root")
UID = 10123  # no account: a bare uid, its home made in the work dir


@pytest.fixture()
def open_tmp():
    """A folder the other uid can reach (pytest's own temp root is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="swarm-run-as-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_swarmui_runs_under_its_own_uid(open_tmp):
    lora = open_tmp / "volume" / "SwarmUI" / "Models" / "Lora"
    # what SwarmUI would see and do: who it is, whether it can read its parent's (the worker's) environment,
    # whether it can write a model into the volume; then it exits, which ends the start
    probe = (f"/bin/sh -c 'id -u > {{data_dir}}/uid; id -G > {{data_dir}}/groups; echo $HOME > {{data_dir}}/home; "
             f"cat /proc/$PPID/environ > {{data_dir}}/environ 2>&1; "
             f"echo weights > {lora}/downloaded_by_swarmui.safetensors; exit 3'")
    with configured_worker(open_tmp, SWARMUI_RUN_AS=f"{UID}:{UID}", SWARMUI_LAUNCH_CMD=probe,
                           SWARMUI_MAX_RESTARTS="0", AWS_SECRET_ACCESS_KEY="worker-secret-not-for-swarmui"):
        out = call({"action": "ready"})
    data = open_tmp / "work" / "Data"
    assert out["ready"] is False and "exited with code 3" in out["error"]
    assert (data / "uid").read_text().strip() == str(UID)
    assert (data / "groups").read_text().strip() == str(UID)  # no supplementary groups (root's are dropped)
    assert (data / "home").read_text().strip() == str(open_tmp / "work" / "home")
    environ = (data / "environ").read_text()
    assert "Permission denied" in environ and "worker-secret-not-for-swarmui" not in environ
    assert (lora / "downloaded_by_swarmui.safetensors").read_text() == "weights\n"
    assert data.stat().st_uid == UID and (open_tmp / "work" / "Output").stat().st_uid == UID
    mode = (lora).stat()
    assert mode.st_gid == UID and stat.S_IMODE(mode.st_mode) & 0o2070 == 0o2070
    for f in (open_tmp / "work" / "model_tree").rglob("*.safetensors"):  # links are handed over, not their targets
        assert f.is_symlink() and f.lstat().st_uid == UID and f.resolve().stat().st_uid == 0


def test_run_as_setting():
    from handlers.swarm_worker.run_as import parse_run_as

    nobody = parse_run_as("nobody")
    assert (nobody.uid, nobody.name) == (65534, "nobody") and nobody.home is None  # /nonexistent
    assert parse_run_as("") is None and parse_run_as("4242:4343").gid == 4343
    for spec, message in [("root", "other than root"), ("0", "other than root"),
                          ("no-such-user-xyz", "no user named"), ("nobody:no-such-group-xyz", "no group named")]:
        with pytest.raises(ValueError, match=message):
            parse_run_as(spec)
