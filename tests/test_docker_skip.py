"""When docker cannot run, the docker tests say why (no docker needed for these checks)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.docker import docker_unavailable_reason


def test_missing_docker_binary_is_named(tmp_path):
    reason = docker_unavailable_reason(str(tmp_path / "docker"))
    assert reason == f"{tmp_path / 'docker'} is not installed (apt-get install docker.io)"


@pytest.mark.skipif(not Path("/usr/bin/docker").exists(), reason="needs the docker client binary")
def test_unreachable_daemon_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-daemon.sock")
    reason = docker_unavailable_reason("/usr/bin/docker")
    assert reason is not None and reason.startswith("the docker daemon cannot be reached (")
    assert "start dockerd" in reason
