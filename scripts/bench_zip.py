"""Benchmark: `common.archives.make_zip` vs `zipfile` with ZIP_DEFLATED on safetensors-like files.

    python -m scripts.bench_zip [--files 3] [--mb 200] [--data random|bf16] [--repeat 1]

Writes N safetensors-like files (a safetensors JSON header, then the tensor bytes) into a
temporary folder, zips them both ways, checks that both archives hold the same entries, prints
time, size and the speed ratio, and removes the folder. Target: make_zip at least 5x faster at
about the same size. `--data random` fills the tensor with random bytes (incompressible, like
fp8 / quantised weights); `--data bf16` with bf16 values ~ N(0, 0.02), like trained weights,
where deflate saves about a fifth of the size at a large cost in time.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common.archives import make_zip  # noqa: E402


def write_safetensors_like(path: Path, size: int, seed: int, data: str) -> None:
    """A safetensors header plus `size` tensor bytes, written in 16 MB blocks."""
    import numpy as np

    n = size // 2
    header = json.dumps({"lora.weight": {"dtype": "BF16", "shape": [n], "data_offsets": [0, n * 2]}}).encode()
    rng = np.random.default_rng(seed)
    block = 8 << 20  # values per block
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        for start in range(0, n, block):
            count = min(block, n - start)
            if data == "random":
                f.write(rng.bytes(count * 2))
            else:
                values = rng.normal(0.0, 0.02, count).astype(np.float32)
                f.write((values.view(np.uint32) >> 16).astype(np.uint16).tobytes())  # float32 -> bf16 bits


def zip_deflated(paths: list[Path], dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in paths:
            zf.write(p, p.name)
    return dest


def timed(fn, *args) -> tuple[float, Path]:
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def same_contents(a: Path, b: Path) -> bool:
    with zipfile.ZipFile(a) as za, zipfile.ZipFile(b) as zb:
        return sorted((i.filename, i.CRC, i.file_size) for i in za.infolist()) == \
            sorted((i.filename, i.CRC, i.file_size) for i in zb.infolist())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=3)
    ap.add_argument("--mb", type=int, default=200, help="size of each file in MB")
    ap.add_argument("--data", choices=("random", "bf16"), default="random", help="tensor contents")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each method; the best time counts")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_zip_") as tmp:
        tmp = Path(tmp)
        paths = [tmp / f"model_{i}.safetensors" for i in range(args.files)]
        for i, p in enumerate(paths):
            write_safetensors_like(p, args.mb << 20, seed=i, data=args.data)
        total = sum(p.stat().st_size for p in paths)
        kind = "random bytes" if args.data == "random" else "bf16 ~ N(0, 0.02)"
        print(f"input: {args.files} x {args.mb} MB safetensors-like ({kind}), {total / 1e6:.0f} MB")

        results = {}
        for label, fn in (("make_zip (stored)", make_zip), ("zipfile ZIP_DEFLATED", zip_deflated)):
            best = None
            for r in range(args.repeat):
                dest = tmp / f"{label.split()[0]}_{r}.zip"
                seconds, out = timed(fn, paths, dest)
                best = seconds if best is None else min(best, seconds)
                size = out.stat().st_size
                if r < args.repeat - 1:
                    out.unlink()
            results[label] = (best, size, out)
            print(f"{label:22s} {best:7.2f} s  {total / best / 1e6:7.0f} MB/s  {size / 1e6:8.1f} MB "
                  f"({size / total:.1%} of input)")

        (fast_s, fast_size, fast_zip), (slow_s, slow_size, slow_zip) = results.values()
        if not same_contents(fast_zip, slow_zip):
            print("ERROR: the two archives hold different contents")
            return 1
        print(f"speed ratio make_zip / ZIP_DEFLATED: {slow_s / fast_s:.1f}x faster "
              f"(target >= 5x); size ratio {fast_size / slow_size:.3f} (make_zip / deflated)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
