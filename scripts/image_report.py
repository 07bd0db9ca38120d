"""Sizes of built images and of their largest layers.

    python -m scripts.image_report IMAGE [IMAGE ...] [--out build]

Writes image-report.json and image-report.md into --out and prints the markdown.
scripts/build_images.py calls it after every build.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

TOP_LAYERS = 5


def _mb(n: int) -> float:
    return round(n / 1e6, 1)


def image_info(image: str, docker: str) -> dict:
    inspect = json.loads(subprocess.run([docker, "image", "inspect", image], capture_output=True, text=True,
                                        check=True).stdout)[0]
    history = subprocess.run([docker, "history", "--no-trunc", "--human=false", "--format", "{{json .}}", image],
                             capture_output=True, text=True, check=True).stdout
    layers = []
    for line in history.splitlines():
        row = json.loads(line)
        size = int(row.get("Size") or 0)
        if size:
            step = " ".join(row.get("CreatedBy", "").split())
            step = step.removeprefix("/bin/sh -c ").removeprefix("#(nop) ")
            layers.append({"size_bytes": size, "size_mb": _mb(size), "step": step[:160] or "(base image layer)"})
    layers.sort(key=lambda r: r["size_bytes"], reverse=True)
    return {"image": image, "id": inspect["Id"], "size_bytes": inspect["Size"], "size_mb": _mb(inspect["Size"]),
            "layers": len(inspect.get("RootFS", {}).get("Layers", [])), "largest_layers": layers[:TOP_LAYERS]}


def report_images(images: list[str], *, docker: str = "/usr/bin/docker",
                  build_seconds: dict[str, float] | None = None) -> dict:
    rows = [image_info(image, docker) for image in images]
    for row in rows:
        if build_seconds and row["image"] in build_seconds:
            row["build_seconds"] = round(build_seconds[row["image"]], 1)
    return {"images": rows, "build_seconds": {k: round(v, 1) for k, v in (build_seconds or {}).items()}}


def to_markdown(report: dict) -> str:
    lines = ["| image | size (MB) | layers | build (s) |", "|---|---:|---:|---:|"]
    for row in report["images"]:
        lines.append(f"| `{row['image']}` | {row['size_mb']} | {row['layers']} | {row.get('build_seconds', '')} |")
    for row in report["images"]:
        lines += ["", f"Largest layers of `{row['image']}`:", ""]
        lines += [f"- {layer['size_mb']} MB: `{layer['step']}`" for layer in row["largest_layers"]]
    bases = {k: v for k, v in report.get("build_seconds", {}).items() if k.startswith("gpu-worker-base:")}
    if bases:
        lines += ["", "Shared base builds: " + ", ".join(f"`{k}` {v}s" for k, v in bases.items())]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "image-report.json", out_dir / "image-report.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(to_markdown(report))
    return json_path, md_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+")
    parser.add_argument("--out", type=Path, default=Path("build"))
    parser.add_argument("--docker", default="/usr/bin/docker")
    args = parser.parse_args(argv)
    try:
        report = report_images(args.images, docker=args.docker)
    except subprocess.CalledProcessError as exc:
        print(f"image_report: {exc.stderr.strip() or exc}", file=sys.stderr)
        return 1
    _, md_path = write_report(report, args.out)
    print(md_path.read_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
