"""Releases: stamp a version into the files that name it, check a tag against them, and write the
release notes from what the registry holds.

    python -m scripts.release prepare 1.2.0      pyproject version, .runpod/Dockerfile and hub.json, docker-bake.hcl
    python -m scripts.release check v1.2.0       (release workflow) the tag matches those files
    python -m scripts.release notes --version 1.2.0 --metadata build/bake-*.json > notes.md

A release is: `prepare`, commit, tag `v<version>`, push the tag. The workflow
(.github/workflows/release.yml) builds the GPU targets with `docker buildx bake` (docker-bake.hcl),
pushes them to GHCR with the version and `latest` tags, and publishes these notes: each image's
digest and compressed size, read back from the registry. The RunPod Hub builds `.runpod/Dockerfile`
from the release's tag; `prepare` stamps the version into it, so results of the Hub's worker carry
the released `worker_version`, and points the listing's icon (`.runpod/icon.svg`) at that tag.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from scripts.build_images import (
    BAKE_FILE,
    HUB_DOCKERFILE,
    IMAGES,
    ROOT,
    bake_file,
    docker_binary,
    hub_dockerfile,
    project_version,
)

PYPROJECT = ROOT / "pyproject.toml"
HUB_JSON = ROOT / ".runpod" / "hub.json"
ICON = ".runpod/icon.svg"
_GITHUB_REMOTE = re.compile(r"github\.com[:/]([\w.-]+/[\w.-]+?)(?:\.git)?/?$")
# PEP 440 release versions without local labels (a tag is `v` + this).
_VERSION = re.compile(r"\d+(\.\d+){1,2}((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?")
_INDEX_TYPES = {"application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"}


class ReleaseError(RuntimeError):
    pass


def check_version(version: str) -> str:
    if not _VERSION.fullmatch(version):
        raise ReleaseError(f"version {version!r}: expected a release version such as 1.2.0 (no leading v)")
    return version


def github_repo(given: str | None) -> str:
    """owner/name of the GitHub repository: `--repo`, else $GITHUB_REPOSITORY, else the `origin` remote."""
    repo = given or os.environ.get("GITHUB_REPOSITORY")
    if not repo:
        proc = subprocess.run(["git", "remote", "get-url", "origin"], cwd=ROOT, capture_output=True, text=True)
        found = _GITHUB_REMOTE.search(proc.stdout.strip()) if proc.returncode == 0 else None
        repo = found.group(1) if found else None
    if not repo or not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise ReleaseError("--repo owner/name: the GitHub repository the RunPod Hub listing's icon is served from "
                           "(no GITHUB_REPOSITORY and no github.com `origin` remote to take it from)")
    return repo


def icon_url(repo: str, version: str) -> str:
    return f"https://raw.githubusercontent.com/{repo}/v{version}/{ICON}"


def prepare(version: str, repo: str | None = None) -> list[Path]:
    """Write `version` into pyproject.toml and regenerate the files derived from it."""
    import tomlkit

    check_version(version)
    repo = github_repo(repo)
    doc = tomlkit.parse(PYPROJECT.read_text())
    doc["project"]["version"] = version
    PYPROJECT.write_text(tomlkit.dumps(doc))
    HUB_DOCKERFILE.write_text(hub_dockerfile())
    BAKE_FILE.write_text(bake_file())
    hub = json.loads(HUB_JSON.read_text())
    hub["iconUrl"] = icon_url(repo, version)
    HUB_JSON.write_text(json.dumps(hub, indent=2) + "\n")
    return [PYPROJECT, HUB_DOCKERFILE, HUB_JSON, BAKE_FILE]


def check_tag(tag: str) -> str:
    """The version a tag releases, after checking that every file naming it agrees."""
    if not tag.startswith("v"):
        raise ReleaseError(f"tag {tag!r}: release tags are v<version>, e.g. v1.2.0")
    version = check_version(tag[1:])
    problems = []
    if project_version() != version:
        problems.append(f"pyproject.toml says version {project_version()}")
    if HUB_DOCKERFILE.read_text() != hub_dockerfile():
        problems.append(f"{HUB_DOCKERFILE.relative_to(ROOT)} is stale")
    if BAKE_FILE.read_text() != bake_file():
        problems.append(f"{BAKE_FILE.relative_to(ROOT)} is stale")
    if not json.loads(HUB_JSON.read_text()).get("iconUrl", "").endswith(f"/v{version}/{ICON}"):
        problems.append(f"{HUB_JSON.relative_to(ROOT)} iconUrl is not this release's {ICON}")
    if problems:
        raise ReleaseError(f"tag {tag}: " + "; ".join(problems)
                           + f". Run `python -m scripts.release prepare {version}`, commit, and tag that commit.")
    return version


def registry_manifest(ref: str) -> dict:
    """The raw manifest (or index) of `ref` in its registry."""
    proc = subprocess.run([docker_binary(), "buildx", "imagetools", "inspect", "--raw", ref],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise ReleaseError(f"cannot read {ref} from the registry: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout)


def compressed_size(ref: str, fetch: Callable[[str], dict] | None = None) -> int:
    """Bytes a `docker pull` of `ref` (linux/amd64) downloads: config plus compressed layers.
    An index is followed to its linux/amd64 image, skipping attestation manifests."""
    fetch = fetch or registry_manifest
    manifest = fetch(ref)
    if manifest.get("mediaType") in _INDEX_TYPES or "manifests" in manifest:
        images = [m for m in manifest["manifests"]
                  if m.get("platform", {}).get("os") == "linux" and m["platform"].get("architecture") == "amd64"]
        if not images:
            raise ReleaseError(f"{ref}: no linux/amd64 image in its index")
        name = ref.split("@", 1)[0]
        manifest = fetch(f"{name}@{images[0]['digest']}")
    return manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])


def image_records(metadata: dict) -> list[dict]:
    """One record per released image from `docker buildx bake --metadata-file` output."""
    records = []
    for name in IMAGES:
        if name not in metadata:
            continue
        entry = metadata[name]
        digest = entry.get("containerimage.digest")
        tags = [t for t in entry.get("image.name", "").split(",") if t]
        if not digest or not tags:
            raise ReleaseError(f"bake metadata of {name} has no digest or image name: {sorted(entry)}")
        records.append({"image": name, "tags": tags, "digest": digest, "repository": tags[0].rsplit(":", 1)[0]})
    if not records:
        raise ReleaseError(f"no image of {', '.join(IMAGES)} in the bake metadata")
    return records


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def notes(version: str, records: list[dict], sizes: dict[str, int]) -> str:
    lines = [f"## Images of {version}", "",
             "GPU targets, linux/amd64. Pin the digest in a RunPod template or vast.ai template.", "",
             "| image | digest | compressed size |", "|---|---|---:|"]
    for rec in records:
        lines.append(f"| `{rec['repository']}:{version}` | `{rec['digest']}` | {_size(sizes[rec['image']])} |")
    lines += ["", "```bash"]
    lines += [f"docker pull {rec['repository']}@{rec['digest']}" for rec in records]
    lines += ["```", "",
              "Deploy: docs/controlnet-pyworker.md, docs/diffusion-pipe-trainer.md, docs/swarm-worker.md.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="stamp VERSION into pyproject.toml, .runpod/Dockerfile and hub.json, "
                                       "docker-bake.hcl")
    p.add_argument("version")
    p.add_argument("--repo", help="GitHub owner/name serving the Hub icon (default: $GITHUB_REPOSITORY or the "
                                  "github.com `origin` remote)")
    p = sub.add_parser("check", help="check that TAG (v<version>) matches the files that name the version")
    p.add_argument("tag")
    p = sub.add_parser("notes", help="release notes (markdown) from bake metadata files, sizes from the registry")
    p.add_argument("--version", required=True)
    p.add_argument("--metadata", nargs="+", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "prepare":
            for path in prepare(args.version, args.repo):
                print(f"wrote {path.relative_to(ROOT)}")
            print(f"now commit, then: git tag v{args.version} && git push origin v{args.version}")
        elif args.cmd == "check":
            print(check_tag(args.tag))
        else:
            metadata: dict = {}
            for path in args.metadata:
                metadata.update(json.loads(path.read_text()))
            records = image_records(metadata)
            sizes = {rec["image"]: compressed_size(f"{rec['repository']}@{rec['digest']}") for rec in records}
            sys.stdout.write(notes(args.version, records, sizes))
    except ReleaseError as exc:
        print(f"release: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
