"""The release pipeline: workflows (actionlint), the generated docker-bake.hcl, version stamping
(`scripts.release prepare/check`), release notes from bake metadata and registry manifests, and
the Makefile targets a fresh checkout needs. No docker, no network."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scripts.build_images import (
    BAKE_FILE,
    GPU_DEVEL_BASE,
    GPU_RUNTIME_BASE,
    IMAGES,
    NEEDS_DEVEL,
    PROJECT_LABEL,
    bake_file,
    torch_version,
)
from scripts.release import ReleaseError, compressed_size, image_records, notes

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / ".github" / "workflows"


def actionlint() -> str:
    found = shutil.which("actionlint") or str(Path(sys.executable).parent / "actionlint")
    assert Path(found).exists(), "actionlint is installed by `make setup` (pyproject dev extra)"
    return found


def load_workflow(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


# --- workflows ---------------------------------------------------------------------------------

def test_workflows_pass_actionlint():
    proc = subprocess.run([actionlint(), *sorted(map(str, WORKFLOWS.glob("*.yml")))], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps:\n"
                   "      - run: echo ${{ github.nonexistent_context_key }}\n        shell: nosuchshell\n")
    proc = subprocess.run([actionlint(), str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "nosuchshell" in proc.stdout


def test_pull_requests_run_lint_and_the_tests():
    ci = load_workflow("ci.yml")
    assert "pull_request" in ci[True]  # YAML 1.1 reads the key `on` as True
    runs = {name: " ".join(step.get("run", "") for step in job["steps"]) for name, job in ci["jobs"].items()}
    assert "make lint" in runs["lint"]
    assert ".ci/run" in runs["test"], "the same entry as the project's CI, which ends in `make test`"
    assert "make test" in (REPO / ".ci" / "run").read_text()
    makefile = (REPO / "Makefile").read_text()
    lint = re.search(r"^lint:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE).group(1)
    assert all(tool in lint for tool in ("ruff check", "hadolint", "actionlint .github/workflows"))


def test_a_version_tag_bakes_pushes_and_publishes_notes():
    rel = load_workflow("release.yml")
    assert rel[True]["push"]["tags"] == ["v*"]
    jobs = rel["jobs"]
    assert jobs["images"]["strategy"]["matrix"]["image"] == list(IMAGES)
    assert jobs["images"]["permissions"]["packages"] == "write"
    images_run = " ".join(s.get("run", "") for s in jobs["images"]["steps"])
    assert "docker buildx bake --file docker-bake.hcl --push --metadata-file" in images_run
    assert 'REGISTRY="ghcr.io/' in images_run
    check_run = " ".join(s.get("run", "") for s in jobs["check"]["steps"])
    assert "scripts.release check" in check_run
    release_run = " ".join(s.get("run", "") for s in jobs["release"]["steps"])
    assert "scripts.release notes" in release_run and "gh release create" in release_run


# --- docker-bake.hcl ---------------------------------------------------------------------------

def test_bake_file_is_generated_and_fresh():
    assert BAKE_FILE.read_text() == bake_file(), \
        "stale docker-bake.hcl: run `python -m scripts.build_images --write-bake-file`"


def _targets(text: str) -> dict[str, str]:
    return dict(re.findall(r'^target "([^"]+)" \{\n(.*?)^\}', text, re.MULTILINE | re.DOTALL))


def test_bake_builds_what_build_images_builds():
    """Same base per image (CUDA devel only where nvcc is needed), GPU target, torch pin, labels."""
    targets = _targets(bake_file())
    assert set(targets) == {*IMAGES, "base-runtime", "base-devel"}
    assert f'"BASE_IMAGE" = "{GPU_RUNTIME_BASE}"' in targets["base-runtime"]
    assert f'"BASE_IMAGE" = "{GPU_DEVEL_BASE}"' in targets["base-devel"]
    key, _, vendor = PROJECT_LABEL.partition("=")
    for name in IMAGES:
        body = targets[name]
        stage = "base-devel" if name in NEEDS_DEVEL else "base-runtime"
        assert f'"{stage}" = "target:{stage}"' in body and f'"WORKER_BASE" = "{stage}"' in body
        assert 'target = "gpu"' in body and f'dockerfile = "images/{name}/Dockerfile"' in body
        assert f'"${{REGISTRY}}/{name}:${{VERSION}}", "${{REGISTRY}}/{name}:latest"' in body
        for label in (f'"{key}" = "{vendor}"', '"org.opencontainers.image.source" = "${SOURCE}"',
                      '"org.opencontainers.image.version" = "${VERSION}"',
                      '"org.opencontainers.image.revision" = "${REVISION}"'):
            assert label in body, (name, label)
        assert f"cache-from = [\"type=registry,ref=${{REGISTRY}}/{name}:buildcache\"]" in body
        assert "mode=max" in body
    assert f'"TORCH_SPEC" = "torch=={torch_version()}"' in targets["base-runtime"]
    # every image Dockerfile's FROM of the base is the WORKER_BASE arg the bake file fills in
    for name in IMAGES:
        assert "FROM ${WORKER_BASE}" in (REPO / "images" / name / "Dockerfile").read_text()


# --- versions ----------------------------------------------------------------------------------

@pytest.fixture
def repo_copy(tmp_path) -> Path:
    """The files a release touches, in a scratch copy of the repository (scripts run from there)."""
    dest = tmp_path / "repo"
    for rel in ("pyproject.toml", "docker-bake.hcl"):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)
    for rel in ("scripts", "images", ".runpod"):
        shutil.copytree(REPO / rel, dest / rel, ignore=shutil.ignore_patterns("__pycache__", "build-extras"))
    return dest


def release(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scripts.release", *args], cwd=repo, capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(repo)})


def test_prepare_stamps_the_version_and_check_accepts_only_its_tag(repo_copy):
    assert release(repo_copy, "check", "v9.8.7").returncode == 1
    no_repo = release(repo_copy, "prepare", "9.8.7")
    assert no_repo.returncode == 1 and "--repo owner/name" in no_repo.stderr, "the icon's repository is needed"
    proc = release(repo_copy, "prepare", "9.8.7", "--repo", "me/gpu-worker-images")
    assert proc.returncode == 0, proc.stderr
    hub_json = json.loads((repo_copy / ".runpod" / "hub.json").read_text())
    assert hub_json["iconUrl"] == "https://raw.githubusercontent.com/me/gpu-worker-images/v9.8.7/.runpod/icon.svg"
    assert 'version = "9.8.7"' in (repo_copy / "pyproject.toml").read_text()
    hub = (repo_copy / ".runpod" / "Dockerfile").read_text()
    assert "ARG WORKER_VERSION=9.8.7" in hub and "ARG WORKER_VERSION=0" not in hub, \
        "the Hub's build of the release reports the released worker_version"
    assert 'variable "VERSION" {\n  default = "9.8.7"' in (repo_copy / "docker-bake.hcl").read_text()

    ok = release(repo_copy, "check", "v9.8.7")
    assert ok.returncode == 0 and ok.stdout.strip() == "9.8.7", ok.stderr
    wrong = release(repo_copy, "check", "v9.8.8")
    assert wrong.returncode == 1 and "pyproject.toml says version 9.8.7" in wrong.stderr
    assert "release: tag 'x1'" in release(repo_copy, "check", "x1").stderr
    assert release(repo_copy, "prepare", "v1.0", "--repo", "me/x").returncode == 1, "a version has no leading v"

    (repo_copy / ".runpod" / "Dockerfile").write_text(hub.replace("9.8.7", "9.8.6"))
    stale = release(repo_copy, "check", "v9.8.7")
    assert stale.returncode == 1 and ".runpod/Dockerfile is stale" in stale.stderr
    (repo_copy / ".runpod" / "Dockerfile").write_text(hub)
    hub_json["iconUrl"] = hub_json["iconUrl"].replace("v9.8.7", "v9.8.6")
    (repo_copy / ".runpod" / "hub.json").write_text(json.dumps(hub_json))
    stale = release(repo_copy, "check", "v9.8.7")
    assert stale.returncode == 1 and "iconUrl is not this release's .runpod/icon.svg" in stale.stderr


def test_the_checked_in_hub_dockerfile_carries_the_project_version():
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE).group(1)
    assert f"ARG WORKER_VERSION={version}" in (REPO / ".runpod" / "Dockerfile").read_text()


# --- release notes -----------------------------------------------------------------------------

DIGEST = "sha256:" + "a" * 64
AMD64 = "sha256:" + "b" * 64


def fake_registry(ref: str) -> dict:
    """An OCI index as buildx pushes it (image + provenance attestation), then the image manifest."""
    if ref.endswith(DIGEST):
        return {"mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
            {"digest": AMD64, "platform": {"os": "linux", "architecture": "amd64"}},
            {"digest": "sha256:" + "c" * 64, "platform": {"os": "unknown", "architecture": "unknown"},
             "annotations": {"vnd.docker.reference.type": "attestation-manifest"}}]}
    assert ref.endswith(AMD64), ref
    return {"mediaType": "application/vnd.oci.image.manifest.v1+json", "config": {"size": 1000},
            "layers": [{"size": 3_000_000_000}, {"size": 499_999_000}]}


def test_compressed_size_follows_the_index_to_the_amd64_image():
    assert compressed_size(f"ghcr.io/me/swarm-worker@{DIGEST}", fetch=fake_registry) == 3_500_000_000
    plain = {"config": {"size": 10}, "layers": [{"size": 5}, {"size": 7}]}
    assert compressed_size("x@sha256:1", fetch=lambda ref: plain) == 22
    with pytest.raises(ReleaseError, match="no linux/amd64"):
        compressed_size("x@sha256:1", fetch=lambda ref: {"manifests": [{"digest": "d", "platform": {"os": "windows"}}]})


def test_release_notes_list_every_image_with_digest_and_size():
    metadata = {name: {"containerimage.digest": DIGEST, "image.name": f"ghcr.io/me/{name}:1.2.0,ghcr.io/me/{name}:latest"}
                for name in IMAGES}
    metadata["base-runtime"] = {"containerimage.digest": AMD64, "image.name": "ghcr.io/me/gpu-worker-base:1.2.0-base-runtime"}
    records = image_records(metadata)
    assert [r["image"] for r in records] == list(IMAGES)
    text = notes("1.2.0", records, {name: 3_500_000_000 for name in IMAGES})
    for name in IMAGES:
        assert f"| `ghcr.io/me/{name}:1.2.0` | `{DIGEST}` | 3.50 GB |" in text
        assert f"docker pull ghcr.io/me/{name}@{DIGEST}" in text
    with pytest.raises(ReleaseError, match="no digest"):
        image_records({"swarm-worker": {"image.name": "ghcr.io/me/swarm-worker:1"}})


def test_release_notes_command_reads_metadata_files(tmp_path, monkeypatch, capsys):
    from scripts import release as rel

    meta = tmp_path / "bake-swarm-worker.json"
    meta.write_text(json.dumps({"swarm-worker": {"containerimage.digest": DIGEST,
                                                 "image.name": "ghcr.io/me/swarm-worker:1.2.0"}}))
    monkeypatch.setattr(rel, "registry_manifest", fake_registry)
    assert rel.main(["notes", "--version", "1.2.0", "--metadata", str(meta)]) == 0
    assert f"| `ghcr.io/me/swarm-worker:1.2.0` | `{DIGEST}` | 3.50 GB |" in capsys.readouterr().out


# --- Makefile ----------------------------------------------------------------------------------

def test_make_build_sets_up_the_venv_first(tmp_path):
    """On a fresh checkout there is no .venv: `make build` must create it before using it."""
    proc = subprocess.run(["make", "-n", "build", f"VENV={tmp_path}/venv", f"VAST_VENV={tmp_path}/vast"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    creates = next(i for i, line in enumerate(lines) if f"-m venv {tmp_path}/venv" in line)
    builds = next(i for i, line in enumerate(lines) if "scripts.build_images" in line)
    assert creates < builds
