"""Fixtures for the diffusion-pipe-trainer tests (registered in tests/conftest.py).

- `trainer_models`: the tiny random-weight JoyCaption-shaped model, built once per session
  into a models dir laid out like the volume's `models/`.
- `dataset_server`: the files a test `put`s, served on 127.0.0.1 (tests/fakes/http_files.py).
- `put_server`: a presigned-PUT target recording what it receives.
- `gemini`: the Gemini stand-in (tests/fakes/gemini.py), fresh state per test.
- `trainer_env`: environment for a job: working dir, models dir, the diffusion-pipe stand-in
  as launcher, Gemini base URL, fast retry pacing.
"""

from __future__ import annotations

import io
import os
import sys
import time
import zipfile
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.fakes.gemini import FakeGemini
from tests.fakes.http_files import FileServer, Route
from tests.fakes.threaded_http import LocalService, read_body, reply

FAKE_ENGINE = Path(__file__).parent / "fakes" / "diffusion_pipe_train.py"
GEMINI_KEY = "test-gemini-key"


@pytest.fixture(scope="session")
def trainer_models(tmp_path_factory) -> Path:
    from scripts.tiny_models.trainer import build

    models = tmp_path_factory.mktemp("trainer-models")
    build(models)
    return models


class DatasetServer(FileServer):
    """Serves what `put` gives it; `requests` lists every request (to prove nothing was downloaded)."""

    def put(self, name: str, data: bytes) -> str:
        self.add(f"/{name}", Route(data))
        return self.url(f"/{name}")

    def put_zip(self, name: str, files: dict[str, bytes]) -> str:
        return self.put(name, make_zip(files))


@pytest.fixture(scope="session")
def dataset_server():
    with DatasetServer() as server:
        yield server


def make_zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def png(seed: int, size: tuple[int, int] = (40, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, ((seed * 37) % 256, (seed * 91) % 256, 120)).save(buf, format="PNG")
    return buf.getvalue()


def mp4(seed: int, frames: int = 40, fps: int = 16) -> bytes:
    """A real (tiny, 16x16) MPEG-4 video of `frames` frames; the worker probes its length with PyAV."""
    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), (seed * 40 + i * 5) % 256, dtype=np.uint8),
                                               format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


@pytest.fixture
def gemini(monkeypatch):
    with FakeGemini() as g:
        monkeypatch.setenv("GEMINI_BASE_URL", g.base_url)
        monkeypatch.setenv("GEMINI_RETRY_INITIAL_DELAY_S", "0.05")
        monkeypatch.setenv("GEMINI_RETRY_JITTER_S", "0")
        monkeypatch.setenv("GEMINI_POLL_S", "0.02")
        yield g


@pytest.fixture
def trainer_env(tmp_path, monkeypatch, trainer_models) -> Path:
    """Env for running jobs in-process or in a worker subprocess; returns the working dir."""
    work = tmp_path / "work"
    models = work / "models"  # per test; the tiny JoyCaption model is linked in, other weights are the test's
    models.mkdir(parents=True)
    for entry in trainer_models.iterdir():
        (models / entry.name).symlink_to(entry)
    engine = tmp_path / "diffusion-pipe"
    engine.mkdir()
    (engine / "train.py").write_text("# diffusion-pipe's entry point would be here; the stand-in launcher runs\n")
    # The image installs flash-attn, which Wan needs; here an empty module stands in for it (the worker only
    # checks that `import flash_attn` works). Tests of the check take it off PYTHONPATH.
    site = tmp_path / "engine-site"
    (site / "flash_attn").mkdir(parents=True)
    (site / "flash_attn" / "__init__.py").write_text('"""STAND-IN for flash-attn (tests only)."""\n')
    env = {
        "DIFFUSION_PIPE_WORKING_DIR": str(work),
        "DIFFUSION_PIPE_DIR": str(engine),
        "DIFFUSION_PIPE_LAUNCHER": f"{sys.executable} {FAKE_ENGINE}",
        "TRAINER_NUM_GPUS": "1",
        "TRAINER_HOST_RAM_GB": "1024",  # the test machine's RAM is no pod's; tests of the RAM check set their own
        "TRAINER_KILL_GRACE_S": "3",
        "TRAINER_PROGRESS_INTERVAL_S": "0",
        "HF_UPDATES_INTERVAL_S": "0",
        "JOYCAPTION_SEED": "0",
        "ALLOW_PRIVATE_DOWNLOADS": "1",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), str(site), os.environ.get("PYTHONPATH", "")]),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in ("HF_TOKEN", "GEMINI_API_KEY", "GOOGLE_API_KEY", "DIFFUSION_PIPE_MODELS_DIR"):
        monkeypatch.delenv(k, raising=False)
    return work


class PutServer(LocalService):
    """A presigned-PUT target: `url(name)` gives a signed-looking URL, `received` the bodies by path;
    set `delay_s` to make each PUT answer that much later (a slow link)."""

    methods = ("PUT",)

    def __init__(self) -> None:
        self.received: dict[str, bytes] = {}
        self.delay_s = 0.0

    def url(self, name: str) -> str:
        return f"{self.origin}/bucket/{name}?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIAFAKE"

    def _dispatch(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        body = read_body(handler)
        time.sleep(self.delay_s)
        self.received[handler.path.split("?")[0]] = body
        reply(handler, 200, headers={"ETag": '"fake"'})


@pytest.fixture
def put_server():
    with PutServer() as server:
        yield server
