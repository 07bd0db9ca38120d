"""Helpers shared by the swarm worker tests: a worker configured against the SwarmUI stand-in."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from tests.fakes import swarmui as fake
from tests.fakes.threaded_http import free_port

ROOT = Path(__file__).resolve().parents[1]


def assert_token_revoked(public_url: str, token: str) -> None:
    """The gateway refuses `token` now (401 from a session request)."""
    from common.swarmui import SwarmUIClient, SwarmUIError

    async def session() -> None:
        async with SwarmUIClient(public_url, token=token) as c:
            await c.session_id()

    try:
        asyncio.run(session())
    except SwarmUIError as err:
        assert err.status == 401, err
    else:
        raise AssertionError("the revoked token was still accepted")


def running_commands() -> list[str]:
    """Command lines of the processes running now (to check none was left behind)."""
    out = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            out.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            pass
    return out


def make_volume(root: Path) -> Path:
    """A network-volume model folder in SwarmUI's layout."""
    models = root / "SwarmUI" / "Models"
    files = ["Stable-Diffusion/OfficialStableDiffusion/sd_xl_base_1.0.safetensors",
             "diffusion_models/Wan/wan2.2_i2v_high_noise_14B_fp8.safetensors",
             "diffusion_models/Wan/wan2.2_i2v_low_noise_14B_fp8.safetensors",
             "Lora/lightx2v_4steps.safetensors",
             "clip/umt5_xxl_fp8_e4m3fn_scaled.safetensors",
             "VAE/Wan/wan_2.1_vae.safetensors"]
    for rel in files:
        path = models / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"weights")
    return models


def worker_env(tmp: Path, **overrides: str) -> dict[str, str]:
    """Environment for a worker whose SwarmUI is the stand-in, with small timing knobs."""
    env = {
        "SWARMUI_LAUNCH_CMD": fake.launch_command(),
        "SWARMUI_DIR": str(tmp / "no-swarmui-install"),
        "SWARMUI_INTERNAL_PORT": str(free_port()),
        "SWARM_PUBLIC_PORT": str(free_port()),
        "SWARM_PUBLIC_HOST": "127.0.0.1",
        "SWARM_WORK_DIR": str(tmp / "work"),
        "SWARM_OUTPUT_DIR": str(tmp / "job-outputs"),
        "SWARMUI_MODEL_ROOT": str(make_volume(tmp / "volume")),
        "SWARMUI_STARTUP_TIMEOUT": "20",
        "SWARMUI_STOP_TIMEOUT": "5",
        "SWARM_IDLE_POLL_SECONDS": "0.1",
        "SWARM_LEASE_MIN_SECONDS": "0.1",
        "FAKE_SWARMUI_STEP_SECONDS": "0.01",
        # SwarmUI's 2 s wait before closing a generation socket and its 10 s refresh debounce, shortened
        # (the worker's knowledge of the debounce with them)
        "FAKE_SWARMUI_WS_CLOSE_WAIT": "0.05",
        "FAKE_SWARMUI_REFRESH_DEBOUNCE": "0.5",
        "SWARMUI_REFRESH_DEBOUNCE_SECONDS": "0.5",
    }
    env.update(overrides)
    return env


@contextlib.contextmanager
def configured_worker(tmp: Path, **overrides: str) -> Iterator[dict[str, str]]:
    """Point the process-wide worker runtime at a fresh configuration; stop it afterwards."""
    from handlers.swarm_worker.runtime import close_runtime

    env = worker_env(tmp, **overrides)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    close_runtime()
    try:
        yield env
    finally:
        close_runtime()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def call(job_input: dict, job_id: str = "job-1") -> dict:
    from handlers.swarm_worker.handler import handler

    return asyncio.run(handler({"id": job_id, "input": job_input}))
