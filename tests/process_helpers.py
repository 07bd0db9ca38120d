"""Processes a test started: whether one still lives, and stopping a start script the way a platform does."""

from __future__ import annotations

import os
import signal
import subprocess
import time


def alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie has ended: only its parent has not reaped it yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"  # the state follows the (command name)
    except (FileNotFoundError, IndexError):
        return False


def gone_within(pid: int, timeout: float) -> bool:
    """Whether `pid` ends within `timeout` seconds (a killed child may show for a moment)."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def stop_gracefully(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM, as the platform stops an instance: `proc` (started with its own session) must end within
    `timeout`, else its whole process group is killed and the test fails."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
