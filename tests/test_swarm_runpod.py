"""The swarm worker as RunPod runs it: `python -m handlers.swarm_worker` in the SDK's modes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.swarm_helpers import ROOT, worker_env


def _processes() -> list[str]:
    out = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            out.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            pass
    return out


def test_sdk_local_mode_runs_the_image_test_input(tmp_path):
    env = {**os.environ, **worker_env(tmp_path)}
    test_input = (ROOT / "test_inputs" / "swarm-worker" / "test_input.json").read_text()
    out = subprocess.run([sys.executable, "-m", "handlers.swarm_worker", "--test_input", test_input],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Job local_test completed successfully." in out.stdout
    assert "'success': True" in out.stdout and "'delivery': 'inline'" in out.stdout
    # SwarmUI went down with the worker process, and was not restarted on the way out
    assert not any(f"--port {env['SWARMUI_INTERNAL_PORT']}" in p for p in _processes())
    assert "restarting SwarmUI" not in out.stderr
    assert json.loads(test_input)["input"]["action"] == "generate"
