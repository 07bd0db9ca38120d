"""Build tiny random-weight models in each image's production layout.

    python -m scripts.make_tiny_models --out DIR [--image NAME ...]

Writes DIR/<image>/, usable as that image's MODELS_DIR (controlnet-pyworker) or
volume models folder (diffusion-pipe-trainer), with a manifest carrying sha256s.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

# image name -> module under scripts.tiny_models exposing build(out_dir: Path) -> None
BUILDERS = {
    "controlnet-pyworker": "scripts.tiny_models.controlnet",
    "diffusion-pipe-trainer": "scripts.tiny_models.trainer",
}


def build(out: Path, images: list[str] | None = None) -> dict[str, Path]:
    built = {}
    for image in images or list(BUILDERS):
        target = out / image
        target.mkdir(parents=True, exist_ok=True)
        importlib.import_module(BUILDERS[image]).build(target)
        built[image] = target
    return built


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--image", action="append", choices=sorted(BUILDERS), help="only this image (repeatable)")
    args = parser.parse_args(argv)
    for image, path in build(args.out, args.image).items():
        print(f"{image}: {path}")


if __name__ == "__main__":
    main()
