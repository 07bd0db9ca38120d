"""Shared helpers for the `gpuworker` CLI tests: run `main(argv)` in-process and capture what it prints."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from scripts.gpuworker.cli import main
from tests.fakes.threaded_http import free_port, wait_port

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class CliRun:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def text(self) -> str:
        return self.out + self.err


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> CliRun:
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    return CliRun(code, captured.out, captured.err)


def start_swarmui(tmp: Path, *, env: dict | None = None, required_auth: str = "") -> tuple[subprocess.Popen, str, int]:
    """The SwarmUI stand-in (tests/fakes/swarmui.py) as a process, with an image model and a Wan video model."""
    from tests.fakes import swarmui as fake

    models = tmp / "models"
    for rel in ("Stable-Diffusion/OfficialStableDiffusion/sd_xl_base_1.0.safetensors",
                "diffusion_models/Wan/wan2.2_i2v_high_noise_14B_fp8.safetensors",
                "diffusion_models/Wan/wan2.2_i2v_low_noise_14B_fp8.safetensors"):
        (models / rel).parent.mkdir(parents=True, exist_ok=True)
        (models / rel).write_bytes(b"x")
    fake.write_settings(tmp / "Data", model_root=models, output_dir=tmp / "Output", required_auth=required_auth,
                        bypass_ips="" if required_auth else None)
    port = free_port()
    cmd = fake.launch_command().format(port=port, data_dir=tmp / "Data", settings_file=tmp / "Data/Settings.fds",
                                       backends_file=tmp / "Data/Backends.fds").split()
    env = {"FAKE_SWARMUI_WS_CLOSE_WAIT": "0.05", **(env or {})}  # SwarmUI waits 2 s before closing
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    if wait_port(port, 30):
        return proc, f"http://127.0.0.1:{port}", port
    proc.kill()
    raise TimeoutError("the SwarmUI stand-in did not open its port")
