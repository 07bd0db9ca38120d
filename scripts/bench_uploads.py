"""S3 upload benchmark, printed as ratios against a baseline measured in the same run.

    python -m scripts.bench_uploads [--size-mib 512] [--rounds 4]

`common.uploads.upload()` (tuned part size, concurrency and client config) vs plain
`boto3 upload_file` with the default `TransferConfig`, to a local SeaweedFS started for the
run. Rounds alternate the order (boto3, ours, reference; then reversed) so machine load and
the server's volume growth hit all alike. Reports wall time and this process's CPU time (what the upload costs
the worker); `weed` CPU is shown too, since on one machine the server shares the cores.

Each round also times a reference that is not a product path: one presigned PUT whose body
goes out with `socket.sendfile` (no copies, no hashing, next to no client CPU). It is the
fastest any client can be against this server on this machine, so its ratio over boto3 is
the ceiling that `upload()`'s ratio can be read against.
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from common.uploads import s3 as s3_method
from common.uploads import upload
from tests.fakes import seaweedfs


def _write_random(path: Path, size: int) -> None:
    chunk = os.urandom(8 << 20)
    with path.open("wb") as fh:
        for _ in range(size // len(chunk)):
            fh.write(chunk)


def _zero_copy_put(url: str, path: Path) -> None:
    """PUT the file to a presigned URL with the body sent by sendfile(2): the reference ceiling."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
    try:
        conn.putrequest("PUT", f"{parts.path}?{parts.query}", skip_accept_encoding=True)
        conn.putheader("Content-Length", str(path.stat().st_size))
        conn.endheaders()
        with path.open("rb") as fh:
            conn.sock.sendfile(fh)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"zero-copy PUT answered {response.status}: {body[:300]!r}")
    finally:
        conn.close()


def _cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(fn, arg: int, weed_pid: int) -> tuple[float, float, float]:
    """(wall, own CPU, server CPU) seconds of `fn(arg)`."""
    cpu0, weed0, t0 = sum(os.times()[:2]), _cpu_of(weed_pid), time.perf_counter()
    fn(arg)
    return time.perf_counter() - t0, sum(os.times()[:2]) - cpu0, _cpu_of(weed_pid) - weed0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)

    server = seaweedfs.start()
    results: dict[str, list[tuple[float, float, float]]] = {"boto3": [], "ours": [], "ceiling": []}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-uploads-") as tmp:
            path = Path(tmp) / "artifact.safetensors"
            _write_random(path, args.size_mib << 20)
            client = server.client()
            spec = {"method": "s3", "s3": server.spec(key_prefix="bench")}
            runs = {
                "boto3": lambda i: client.upload_file(str(path), server.bucket, f"plain/{i}.safetensors"),
                "ours": lambda i: upload([path], spec, job_id=f"round{i}"),
                "ceiling": lambda i: _zero_copy_put(client.generate_presigned_url(
                    "put_object", Params={"Bucket": server.bucket, "Key": f"zero-copy/{i}.safetensors"},
                    ExpiresIn=600), path),
            }
            for i in range(args.rounds):
                order = ("boto3", "ours", "ceiling") if i % 2 == 0 else ("ceiling", "ours", "boto3")
                for name in order:
                    results[name].append(_measure(runs[name], i, server.process.pid))
                b, o, c = (results[name][-1] for name in ("boto3", "ours", "ceiling"))
                print(f"round {i + 1} ({order[0]} first): boto3 default {b[0]:.2f}s (cpu {b[1]:.2f}s), "
                      f"ours {o[0]:.2f}s (cpu {o[1]:.2f}s), zero-copy PUT {c[0]:.2f}s (cpu {c[1]:.2f}s)",
                      flush=True)
    finally:
        server.stop()

    def median(name: str, k: int) -> float:
        return statistics.median(r[k] for r in results[name])

    mib = args.size_mib
    bw, ow, cw = median("boto3", 0), median("ours", 0), median("ceiling", 0)
    bc, oc = median("boto3", 1), median("ours", 1)
    print(f"\nS3 upload of {mib} MiB to local SeaweedFS, median of {args.rounds} alternating rounds:")
    print(f"  boto3 upload_file, default TransferConfig: {bw:.2f}s ({mib / bw:.0f} MiB/s), client CPU {bc:.2f}s, "
          f"server CPU {median('boto3', 2):.2f}s")
    part, threads = s3_method.transfer_settings()
    print(f"  upload() with {part >> 20} MiB parts x {threads} threads: "
          f"{ow:.2f}s ({mib / ow:.0f} MiB/s), client CPU {oc:.2f}s, server CPU {median('ours', 2):.2f}s")
    print(f"  reference, one zero-copy PUT (sendfile, no hashing): {cw:.2f}s ({mib / cw:.0f} MiB/s), "
          f"client CPU {median('ceiling', 1):.2f}s, server CPU {median('ceiling', 2):.2f}s")
    print(f"  wall speed-up: {bw / ow:.2f}x (target >= 1.3x); client CPU: {bc / max(oc, 1e-3):.2f}x less "
          "(ours also hashes the artifact and presigns the link)")
    print(f"  ceiling on this machine and server: {bw / cw:.2f}x over boto3 for a client using next to no CPU; "
          f"upload() reaches {(bw / ow - 1) / max(bw / cw - 1, 1e-3):.0%} of that gain")


if __name__ == "__main__":
    main()
