"""Fixtures for the controlnet-pyworker tests: tiny models (built once per session), an
in-process engine, and the real model server as a subprocess."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fakes.threaded_http import free_port

REPO = Path(__file__).resolve().parents[1]
SIZE = 256


def png_size(b64: str) -> tuple[int, int]:
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(b64))).size


def body(**kw) -> dict:
    """A small valid /generate body (256x256, mock depth, fixed seed), overridable."""
    out = {"prompt": "a quiet valley with a river", "mock_depth": True, "width": SIZE, "height": SIZE, "seed": 7}
    out.update(kw)
    return {k: v for k, v in out.items() if v is not None}


@pytest.fixture(scope="session")
def cn_models(tmp_path_factory) -> Path:
    from scripts.tiny_models.controlnet import build

    return build(tmp_path_factory.mktemp("cn-models") / "controlnet-pyworker")


@pytest.fixture(scope="session")
def cn_manifest(cn_models):
    from handlers.controlnet_pyworker import manifest

    return manifest.load(cn_models / "manifest.json")


@pytest.fixture(scope="session")
def cn_engine(cn_manifest, cn_models):
    from handlers.controlnet_pyworker.engine import Engine

    return Engine(cn_manifest, cn_models, device="cpu", max_loaded=3, max_waiting=4, fetch_missing=False)


@dataclass
class ServerProc:
    url: str
    port: int
    model_log: Path
    log: Path
    proc: subprocess.Popen

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def server_env(models: Path, model_log: Path, port: int, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"MODELS_DIR": str(models), "MODEL_LOG": str(model_log), "MODEL_SERVER_HOST": "127.0.0.1",
                "MODEL_SERVER_PORT": str(port), "PRELOAD_MODEL": "lightning", "LOG_LEVEL": "info",
                "PYTHONPATH": str(REPO), "DEVICE": "cpu"})
    env.update(extra)
    return env


def start_server(tmp: Path, models: Path, **extra: str) -> ServerProc:
    port = free_port()
    model_log, log = tmp / "model_server.log", tmp / "server.out"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "handlers.controlnet_pyworker.server"], cwd=REPO,
                                env=server_env(models, model_log, port, **extra), stdout=out,
                                stderr=subprocess.STDOUT)
    srv = ServerProc(f"http://127.0.0.1:{port}", port, model_log, log, proc)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"model server exited {proc.returncode}:\n{srv.log_tail()}")
        if model_log.exists() and "MODEL_SERVER_" in model_log.read_text():
            return srv
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"model server not ready:\n{srv.log_tail()}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="session")
def cn_server_models(cn_models, tmp_path_factory) -> Path:
    """The tiny models plus a `broken` variant whose base checkpoint is unreadable (engine failure)."""
    root = tmp_path_factory.mktemp("cn-server-models")
    for entry in cn_models.iterdir():
        (root / entry.name).symlink_to(entry)
    (root / "manifest.json").unlink()
    data = json.loads((cn_models / "manifest.json").read_text())
    broken = root / "broken-sdxl"
    broken.mkdir()
    (broken / "model_index.json").write_text('{"_class_name": "StableDiffusionXLPipeline", "unet": ')
    data["components"]["broken-base"] = {"kind": "sdxl", "path": "broken-sdxl", "files": [
        {"name": "model_index.json", "source": "https://example.invalid/model_index.json", "sha256": None}]}
    data["variants"]["broken"] = dict(data["variants"]["base"], base="broken-base")
    (root / "manifest.json").write_text(json.dumps(data))
    return root


@pytest.fixture(scope="session")
def cn_server(cn_server_models, tmp_path_factory):
    """The real model server (`python -m handlers.controlnet_pyworker.server`) with a queue of 2."""
    srv = start_server(tmp_path_factory.mktemp("cn-server"), cn_server_models, MAX_QUEUE="2",
                       MAX_IMAGE_B64_BYTES="300000")
    yield srv
    stop(srv.proc)
