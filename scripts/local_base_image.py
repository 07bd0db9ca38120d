"""A local Debian bookworm base image for machines that cannot pull from a registry.

`debootstrap --variant=minbase bookworm` into a temp dir, then `docker import` it as
`local/debian:bookworm-minbase`. Cached: nothing happens when the image already exists.
The CPU targets of the images build on it (`--base-image local/debian:bookworm-minbase`).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_TAG = "local/debian:bookworm-minbase"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DOCKER = "/usr/bin/docker"


def image_exists(tag: str, docker: str = DOCKER) -> bool:
    return subprocess.run([docker, "image", "inspect", tag], capture_output=True).returncode == 0


def ensure_local_base(tag: str = DEFAULT_TAG, *, mirror: str = DEFAULT_MIRROR, docker: str = DOCKER,
                      log=print) -> str:
    """Create the image unless it exists; return its tag."""
    if image_exists(tag, docker):
        log(f"local base {tag}: already present")
        return tag
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not Path(debootstrap).exists():
        raise RuntimeError("debootstrap is not installed (apt-get install -y debootstrap)")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="debootstrap-") as tmp:
        root = Path(tmp) / "rootfs"
        log(f"local base {tag}: debootstrap --variant=minbase bookworm from {mirror} ...")
        subprocess.run([debootstrap, "--variant=minbase", "bookworm", str(root), mirror],
                       check=True, stdout=subprocess.DEVNULL)
        # Drop the apt lists and caches: the Dockerfiles run `apt-get update` themselves.
        for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*_*"):
            for p in root.glob(pattern):
                p.unlink()
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run([docker, "import", "--change", 'CMD ["/bin/bash"]', "-", tag],
                       stdin=tar.stdout, check=True, stdout=subprocess.DEVNULL)
        if tar.wait() != 0:
            raise RuntimeError("tar of the debootstrap root failed")
    log(f"local base {tag}: created in {time.monotonic() - start:.0f}s")
    return tag


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", default=DEFAULT_TAG)
    parser.add_argument("--mirror", default=DEFAULT_MIRROR)
    args = parser.parse_args(argv)
    try:
        ensure_local_base(args.tag, mirror=args.mirror)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"local base image: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
