"""Build the worker images: the shared base (images/base/Dockerfile), then each image on it.

    python -m scripts.build_images [--tag dev] [--target gpu|cpu] [--base-image IMAGE]
                                   [--images controlnet-pyworker ...] [--bake-variant lightning]

GPU (default): the base is built on the CUDA runtime image (devel for diffusion-pipe-trainer,
whose DeepSpeed compiles ops with nvcc), torch from the CUDA 12.8 wheel index.
CPU: the base is built on BASE_IMAGE or, without one, on a local Debian bookworm image made with
debootstrap (scripts/local_base_image.py; no registry needed). The host's torch CPU wheel (from
pip's find-links, e.g. /opt/wheels) goes into the build extras so the build never downloads
torch; the host's CA bundle goes there too, for hosts behind a TLS-inspecting proxy. Both are
mounted into the RUN steps that need them, never copied into a layer.

Each image's build time is printed, and the sizes (scripts/image_report.py) are written to
build/image-report.{json,md} and printed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from scripts.image_report import report_images, write_report
from scripts.local_base_image import DEFAULT_TAG as LOCAL_BASE_TAG
from scripts.local_base_image import ensure_local_base

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ("controlnet-pyworker", "diffusion-pipe-trainer", "swarm-worker")
GPU_RUNTIME_BASE = "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04"
GPU_DEVEL_BASE = "nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04"
# Images whose GPU target needs the CUDA toolkit (nvcc) rather than the runtime.
NEEDS_DEVEL = {"diffusion-pipe-trainer"}
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
EXTRAS = ROOT / "images" / "base" / "build-extras"
HOST_CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")


def docker_binary() -> str:
    """/usr/bin/docker first: on some hosts /usr/local/bin/docker is a different tool."""
    env = os.environ.get("DOCKER")
    if env:
        return env
    if Path("/usr/bin/docker").exists():
        return "/usr/bin/docker"
    return shutil.which("docker") or "docker"


def torch_version() -> str:
    """The torch pin of the controlnet extra (the same pin in every extra)."""
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    for req in extras["controlnet"]:
        m = re.fullmatch(r"torch==([\w.]+)", req.replace(" ", ""))
        if m:
            return m.group(1)
    raise SystemExit("pyproject.toml: no torch==X pin in the controlnet extra")


def pip_find_links() -> list[Path]:
    """The local wheel folders pip is configured with (PIP_FIND_LINKS, pip config)."""
    folders = os.environ.get("PIP_FIND_LINKS", "").split()
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key.strip().endswith("find-links"):
            folders += value.strip().strip("'\"").split()
    return [Path(f.removeprefix("file://")) for f in folders if f and "://" not in f.removeprefix("file://")]


def find_cpu_torch_wheel(version: str, python_tag: str) -> Path | None:
    for folder in pip_find_links():
        for wheel in sorted(folder.glob(f"torch-{version}+cpu-{python_tag}-*.whl")):
            return wheel
    return None


def _place(src: Path, dest: Path) -> None:
    """Hard link (or copy with its mtime) src to dest unless an identical file is there, so the
    mounted extras stay byte- and metadata-identical between builds and BuildKit's cache holds."""
    if dest.exists():
        a, b = src.stat(), dest.stat()
        if (a.st_size, int(a.st_mtime)) == (b.st_size, int(b.st_mtime)):
            return
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def prepare_extras(*, target: str, python_tag: str, log=print) -> dict[str, str]:
    """Fill images/base/build-extras; return the torch build args for the base."""
    wanted: dict[str, Path] = {}
    ca = next((Path(b) for b in HOST_CA_BUNDLES if Path(b).is_file()), None)
    if ca:
        wanted["ca.crt"] = ca
    version = torch_version()
    args = {"TORCH_SPEC": f"torch=={version}"}
    if target == "cpu":
        wheel = find_cpu_torch_wheel(version, python_tag)
        args = {"TORCH_SPEC": f"torch=={version}+cpu", "TORCH_INDEX_URL": CPU_TORCH_INDEX}
        if wheel is None:
            log(f"no local torch {version}+cpu wheel for {python_tag}: the base downloads it from {CPU_TORCH_INDEX}")
        else:
            wanted[f"wheelhouse/{wheel.name}"] = wheel
            args["TORCH_INDEX_URL"] = ""
            log(f"torch from the host's wheel {wheel}")
    for path in sorted(EXTRAS.rglob("*"), reverse=True):
        rel = path.relative_to(EXTRAS).as_posix()
        if rel == ".gitignore" or rel in wanted or any(w.startswith(rel + "/") for w in wanted):
            continue
        path.rmdir() if path.is_dir() else path.unlink()
    for rel, src in wanted.items():
        _place(src, EXTRAS / rel)
    return args


def project_version() -> str:
    """pyproject's `version`: the release version (a release tag is `v<version>`)."""
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["version"]


def git_revision(short: bool = False) -> str:
    """The commit the images are built from ("" outside a git checkout)."""
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", *(["--short=12"] if short else []), "HEAD"],
                              capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def worker_version() -> str:
    """pyproject's version plus the git commit the image is built from."""
    version, sha = project_version(), git_revision(short=True)
    return f"{version}+g{sha}" if sha else version


# Every image built here carries this label, so that clean-up can never touch anyone else's images.
PROJECT_LABEL = "org.opencontainers.image.vendor=gpu-worker-images"


def oci_labels(version: str, revision: str) -> dict[str, str]:
    """The OCI labels every image gets, here and in the release build (docker-bake.hcl)."""
    key, _, vendor = PROJECT_LABEL.partition("=")
    return {key: vendor, "org.opencontainers.image.version": version, "org.opencontainers.image.revision": revision}


def docker_build(docker: str, dockerfile: Path, tag: str, *, target: str | None = None,
                 build_args: dict[str, str] | None = None, secrets: list[str] | None = None,
                 quiet: bool = False, no_cache: bool = False, network: str | None = None,
                 labels: dict[str, str] | None = None) -> None:
    cmd = [docker, "build", "-f", str(dockerfile), "-t", tag, "--label", PROJECT_LABEL]
    for key, value in (labels or {}).items():
        cmd += ["--label", f"{key}={value}"]
    cmd += ["--no-cache"] if no_cache else []
    if network:
        cmd += ["--network", network]
    if target:
        cmd += ["--target", target]
    for key, value in (build_args or {}).items():
        cmd += ["--build-arg", f"{key}={value}"]
    for secret in secrets or []:
        cmd += ["--secret", secret]
    cmd += ["--progress=plain", str(ROOT)]
    env = dict(os.environ, DOCKER_BUILDKIT="1")
    if quiet:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-60:])
            raise BuildError(f"docker build of {tag} failed:\n{tail}")
    elif subprocess.run(cmd, env=env).returncode != 0:
        raise BuildError(f"docker build of {tag} failed")


class BuildError(RuntimeError):
    pass


def prune_replaced(docker: str, log=print) -> None:
    """Remove the images of ours that rebuilds left untagged (a rebuild moves the tag to the new image
    and orphans the old one: gigabytes per round on a build machine). BuildKit's layer cache is kept."""
    proc = subprocess.run([docker, "image", "prune", "--force", "--filter", f"label={PROJECT_LABEL}"],
                          capture_output=True, text=True)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    log(f"pruned replaced images: {lines[-1] if lines else 'nothing to do'}" if proc.returncode == 0
        else f"could not prune replaced images: {lines[-1] if lines else proc.returncode}")


def base_tag(tag: str, target: str, base_image: str) -> str:
    """gpu-worker-base:<tag>-cpu, -gpu (CUDA runtime) or -gpu-devel (CUDA devel)."""
    devel = target == "gpu" and "devel" in base_image
    return f"gpu-worker-base:{tag}-{target}" + ("-devel" if devel else "")


def build(images: list[str], *, tag: str, target: str, base_image: str | None = None,
          bake_variant: str | None = None, hf_token_file: str | None = None, quiet: bool = False,
          no_cache: bool = False, version: str | None = None, bake_manifest: str | None = None,
          report_dir: Path | None = None,
          log=print) -> dict[str, float]:
    """Build the base(s) and the images; return the seconds each took (bases included)."""
    docker = docker_binary()
    if target == "cpu" and base_image is None:
        base_image = ensure_local_base(LOCAL_BASE_TAG, docker=docker, log=log)
    python_tag = "cp311"  # Debian bookworm's python3; the CPU wheel must match it
    torch_args = prepare_extras(target=target, python_tag=python_tag, log=log)
    timings: dict[str, float] = {}
    bases: dict[str, str] = {}
    version = version or worker_version()
    labels = oci_labels(version, git_revision())
    built: list[str] = []
    for name in images:
        image_base = base_image or (GPU_DEVEL_BASE if name in NEEDS_DEVEL else GPU_RUNTIME_BASE)
        if image_base not in bases:
            btag = base_tag(tag, target, image_base)
            start = time.monotonic()
            log(f"== base {btag} on {image_base}")
            docker_build(docker, ROOT / "images" / "base" / "Dockerfile", btag,
                         build_args={"BASE_IMAGE": image_base, **torch_args}, quiet=quiet, no_cache=no_cache)
            timings[btag] = time.monotonic() - start
            log(f"== base {btag} built in {timings[btag]:.0f}s")
            bases[image_base] = btag
        image_tag = f"{name}:{tag}"
        args = {"WORKER_BASE": bases[image_base], "WORKER_VERSION": version}
        if bake_variant and name == "controlnet-pyworker":
            args.update(BAKE_VARIANT=bake_variant, MODELS_DIR="/opt/models")
        secrets = []
        if name == "controlnet-pyworker":
            secrets += [f"id=hf_token,src={hf_token_file}"] if hf_token_file else []
            secrets += [f"id=model_manifest,src={bake_manifest}"] if bake_manifest else []
        start = time.monotonic()
        log(f"== {image_tag} (target {target})")
        docker_build(docker, ROOT / "images" / name / "Dockerfile", image_tag, target=target, build_args=args,
                     secrets=secrets, quiet=quiet, no_cache=no_cache, labels=labels)
        timings[image_tag] = time.monotonic() - start
        log(f"== {image_tag} built in {timings[image_tag]:.0f}s")
        built.append(image_tag)
    prune_replaced(docker, log)
    report = report_images(built, docker=docker, build_seconds=timings)
    json_path, md_path = write_report(report, report_dir or ROOT / "build")
    log(md_path.read_text())
    log(f"image report: {json_path}")
    return timings


HUB_IMAGE = "controlnet-pyworker"
HUB_DOCKERFILE = ROOT / ".runpod" / "Dockerfile"


def hub_dockerfile(name: str = HUB_IMAGE) -> str:
    """One self-contained Dockerfile (shared base + the image's stages) for builders that take a
    single Dockerfile, such as the RunPod Hub (.runpod/Dockerfile). Generated, never edited."""
    base = (ROOT / "images" / "base" / "Dockerfile").read_text()
    if name in NEEDS_DEVEL:
        base = base.replace(f"ARG BASE_IMAGE={GPU_RUNTIME_BASE}", f"ARG BASE_IMAGE={GPU_DEVEL_BASE}")
    image_lines = []
    for line in (ROOT / "images" / name / "Dockerfile").read_text().splitlines():
        if line.startswith("ARG WORKER_BASE="):
            continue
        if line.startswith("ARG WORKER_VERSION="):  # the Hub builds a release: stamp its version
            line = f"ARG WORKER_VERSION={project_version()}"
        image_lines.append(line.replace("FROM ${WORKER_BASE}", "FROM base"))
    header = (f"# GENERATED by `python -m scripts.build_images --write-hub-dockerfile` from images/base/Dockerfile\n"
              f"# and images/{name}/Dockerfile: edit those, then regenerate. The RunPod Hub builds this file\n"
              f"# (one Dockerfile per repository); its last stage is the GPU target.\n\n")
    return header + base + "\n# ---- images/" + name + "/Dockerfile ----\n" + "\n".join(image_lines) + "\n"


BAKE_FILE = ROOT / "docker-bake.hcl"
# The base stage each CUDA base image gets in the release build, and the name the image
# Dockerfiles see it by (their WORKER_BASE, served to them as a bake named context).
BAKE_BASES = {GPU_RUNTIME_BASE: "base-runtime", GPU_DEVEL_BASE: "base-devel"}


def _hcl(value) -> str:
    """An HCL literal (strings, lists and maps of strings)."""
    if isinstance(value, dict):
        return "{\n" + "".join(f"    {json.dumps(k)} = {_hcl(v)}\n" for k, v in value.items()) + "  }"
    if isinstance(value, list):
        return "[" + ", ".join(_hcl(v) for v in value) + "]"
    return json.dumps(value)


def _bake_target(name: str, fields: dict) -> str:
    return f'target "{name}" {{\n' + "".join(f"  {k} = {_hcl(v)}\n" for k, v in fields.items()) + "}\n"


def bake_file() -> str:
    """docker-bake.hcl: the release build of the GPU targets (`docker buildx bake --push`), made from
    the same constants as `build()` (base per image, build args, labels), so the two never drift.
    Generated, never edited; VERSION, REVISION, SOURCE and REGISTRY come from the environment."""
    def cache(ref: str) -> dict:
        return {"cache-from": [f"type=registry,ref=${{REGISTRY}}/{ref}"],
                "cache-to": [f"type=registry,ref=${{REGISTRY}}/{ref},mode=max,image-manifest=true,oci-mediatypes=true"]}

    labels = {**oci_labels("${VERSION}", "${REVISION}"), "org.opencontainers.image.source": "${SOURCE}"}
    out = [
        "# GENERATED by `python -m scripts.build_images --write-bake-file` from scripts/build_images.py:\n"
        "# edit that, then regenerate. The release workflow (.github/workflows/release.yml) runs\n"
        "#   VERSION=1.2.3 REVISION=<sha> SOURCE=<repo url> REGISTRY=ghcr.io/<owner> docker buildx bake --push\n"
        "# building the GPU target of every image on its shared base, with a registry layer cache.\n\n",
        *(f'variable "{v}" {{\n  default = {json.dumps(d)}\n}}\n\n' for v, d in
          (("REGISTRY", "ghcr.io/gpu-worker-images"), ("VERSION", project_version()), ("REVISION", ""),
           ("SOURCE", ""))),
        f'group "default" {{\n  targets = {_hcl(list(IMAGES))}\n}}\n\n',
    ]
    torch = {"TORCH_SPEC": f"torch=={torch_version()}"}  # TORCH_INDEX_URL: the Dockerfile's CUDA 12.8 default
    for base_image, stage in BAKE_BASES.items():
        # Pushed too (a linked target needs a tag under --push): a base for images of your own.
        out.append(_bake_target(stage, {"context": ".", "dockerfile": "images/base/Dockerfile",
                                        "args": {"BASE_IMAGE": base_image, **torch}, "labels": labels,
                                        "tags": [f"${{REGISTRY}}/gpu-worker-base:${{VERSION}}-{stage}"],
                                        **cache(f"gpu-worker-base:buildcache-{stage}")}) + "\n")
    for name in IMAGES:
        stage = BAKE_BASES[GPU_DEVEL_BASE if name in NEEDS_DEVEL else GPU_RUNTIME_BASE]
        out.append(_bake_target(name, {
            "context": ".", "dockerfile": f"images/{name}/Dockerfile", "target": "gpu",
            "contexts": {stage: f"target:{stage}"},
            "args": {"WORKER_BASE": stage, "WORKER_VERSION": "${VERSION}"},
            "labels": labels,
            "tags": [f"${{REGISTRY}}/{name}:${{VERSION}}", f"${{REGISTRY}}/{name}:latest"],
            **cache(f"{name}:buildcache"),
        }) + "\n")
    return "".join(out).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the worker images on a shared base.")
    parser.add_argument("--tag", default="dev")
    parser.add_argument("--target", choices=("gpu", "cpu"), default="gpu")
    parser.add_argument("--base-image", help="FROM of the shared base (default: CUDA runtime/devel for gpu, "
                                             f"a local debootstrap Debian ({LOCAL_BASE_TAG}) for cpu)")
    parser.add_argument("--images", nargs="+", choices=IMAGES, default=list(IMAGES))
    parser.add_argument("--bake-variant", help="controlnet-pyworker: fetch this model variant into the image")
    parser.add_argument("--hf-token-file", help="file holding a Hugging Face token for --bake-variant "
                                                "(a build secret, not stored in the image)")
    parser.add_argument("--bake-manifest", help="controlnet-pyworker: bake from this model manifest (kept in the "
                                                "image as /opt/models/manifest.json)")
    parser.add_argument("--quiet", action="store_true", help="show docker's output only when a build fails")
    parser.add_argument("--no-cache", action="store_true", help="rebuild every layer (to measure cold build times)")
    parser.add_argument("--write-hub-dockerfile", action="store_true",
                        help=f"write {HUB_DOCKERFILE.relative_to(ROOT)} ({HUB_IMAGE}) and exit")
    parser.add_argument("--write-bake-file", action="store_true",
                        help=f"write {BAKE_FILE.relative_to(ROOT)} (the release build) and exit")
    args = parser.parse_args(argv)
    if args.write_hub_dockerfile or args.write_bake_file:
        for wanted, path, text in ((args.write_hub_dockerfile, HUB_DOCKERFILE, hub_dockerfile),
                                   (args.write_bake_file, BAKE_FILE, bake_file)):
            if wanted:
                path.write_text(text())
                print(f"wrote {path.relative_to(ROOT)}")
        return 0
    try:
        build(args.images, tag=args.tag, target=args.target, base_image=args.base_image,
              bake_variant=args.bake_variant, hf_token_file=args.hf_token_file, quiet=args.quiet,
              no_cache=args.no_cache, bake_manifest=args.bake_manifest)
    except (BuildError, RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"build_images: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
