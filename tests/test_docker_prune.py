"""Rebuilds clean up after themselves: the images a rebuild orphaned go, only if they are ours."""

from __future__ import annotations

import os
import subprocess

import pytest

from scripts.build_images import PROJECT_LABEL, docker_build, prune_replaced

pytestmark = [pytest.mark.docker]

# An image with one small layer and no base, so the test needs no registry and builds in a second.
DOCKERFILE = "FROM scratch\nARG N\nCOPY pyproject.toml /\nLABEL test.round=$N\n"


def image_id(docker: str, ref: str) -> str:
    return subprocess.run([docker, "image", "inspect", "--format", "{{.Id}}", ref], capture_output=True, text=True,
                          check=True).stdout.strip()


def exists(docker: str, ref: str) -> bool:
    return subprocess.run([docker, "image", "inspect", ref], capture_output=True).returncode == 0


def test_prune_removes_our_replaced_images_and_nobody_elses(docker, tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(DOCKERFILE)
    (tmp_path / "pyproject.toml").write_text("# the foreign build's context\n")
    ours, foreign = [], []
    try:
        for n in ("1", "2"):
            docker_build(docker.binary, dockerfile, "gwi-prune-test:ours", build_args={"N": n}, quiet=True)
            ours.append(image_id(docker.binary, "gwi-prune-test:ours"))
            # the same rebuild without our label, as someone else's image on the machine would be
            subprocess.run([docker.binary, "build", "-q", "-f", str(dockerfile), "-t", "gwi-prune-test:foreign",
                            "--build-arg", f"N={n}", str(tmp_path)],
                           capture_output=True, text=True, check=True, env=dict(os.environ, DOCKER_BUILDKIT="1"))
            foreign.append(image_id(docker.binary, "gwi-prune-test:foreign"))
        assert ours[0] != ours[1] and foreign[0] != foreign[1]
        assert PROJECT_LABEL.split("=")[0] in subprocess.run(
            [docker.binary, "image", "inspect", "--format", "{{json .Config.Labels}}", ours[1]],
            capture_output=True, text=True, check=True).stdout
        lines: list[str] = []
        prune_replaced(docker.binary, log=lines.append)
        assert lines and lines[0].startswith("pruned replaced images:"), lines
        assert not exists(docker.binary, ours[0])  # orphaned by the rebuild: gone
        assert exists(docker.binary, ours[1])  # still tagged: kept
        assert exists(docker.binary, foreign[0])  # untagged but not ours: kept
    finally:
        subprocess.run([docker.binary, "image", "rm", "-f", "gwi-prune-test:ours", "gwi-prune-test:foreign",
                        *ours, *foreign], capture_output=True)
