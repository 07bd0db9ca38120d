"""Upload and zip benchmarks, printed as ratios against a baseline measured in the same run.

    python -m scripts.bench_uploads [--size-mib 512] [--rounds 3]

S3: `common.uploads.upload()` (tuned part size and concurrency) vs plain `boto3 upload_file`
with the default `TransferConfig`, to a local SeaweedFS started for the run; rounds alternate
so machine load hits both alike. Zip: see `scripts/bench_zip.py`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from common.uploads import s3 as s3_method
from common.uploads import upload
from tests.fakes import seaweedfs


def _write_random(path: Path, size: int) -> None:
    chunk = os.urandom(8 << 20)
    with path.open("wb") as fh:
        for _ in range(size // len(chunk)):
            fh.write(chunk)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    server = seaweedfs.start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-uploads-") as tmp:
            path = Path(tmp) / "artifact.safetensors"
            _write_random(path, args.size_mib << 20)
            client = server.client()
            spec = {"method": "s3", "s3": server.spec(key_prefix="bench")}
            ours, plain = [], []
            for i in range(args.rounds):
                t0 = time.perf_counter()
                client.upload_file(str(path), server.bucket, f"plain/{i}.safetensors")
                plain.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                upload([path], spec, job_id=f"round{i}")
                ours.append(time.perf_counter() - t0)
                print(f"round {i + 1}: boto3 default {plain[-1]:.2f}s, ours {ours[-1]:.2f}s")
    finally:
        server.stop()

    p, o = statistics.median(plain), statistics.median(ours)
    mib = args.size_mib
    print(f"\nS3 upload of {mib} MiB to local SeaweedFS (median of {args.rounds}):")
    print(f"  boto3 upload_file, default TransferConfig: {p:.2f}s ({mib / p:.0f} MiB/s)")
    print(f"  upload() with {s3_method.MULTIPART_CHUNKSIZE >> 20} MiB parts x {s3_method.MAX_CONCURRENCY} threads: "
          f"{o:.2f}s ({mib / o:.0f} MiB/s)")
    print(f"  speed-up: {p / o:.2f}x (target >= 1.3x); ours includes sha256 and presigning")


if __name__ == "__main__":
    main()
