"""Child processes the workers start (the training engine, JoyCaption, SwarmUI, cloudflared).

One way for all of them: the child leads its own session (so ending it ends what it started too),
its output is read in chunks (a line reader gives up on a line longer than its buffer, and then
the pipe fills and the child blocks on its next write), it is stopped with SIGTERM, a grace
period, then SIGKILL for whatever of its group is left, and it gets the worker's environment
without the worker's credentials.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from common.redaction import is_sensitive_key

READ_CHUNK = 64 * 1024
# Whole families of operator credentials and job plumbing (RunPod's job-queue URLs, S3 settings) a
# child has no use for, beside every key `is_sensitive_key` recognises.
_DROPPED_PREFIXES = ("AWS_", "S3_", "RUNPOD_WEBHOOK_")


def free_port() -> int:
    """A port of 127.0.0.1 free right now, for a child that binds it itself (DeepSpeed's master port,
    a server a test or benchmark starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(keep: Iterable[str] = (), *, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (the worker's environment) without its secrets, except the names in `keep`."""
    kept = {name.strip() for name in keep if name.strip()}
    env = os.environ if base is None else base
    return {k: v for k, v in env.items()
            if k in kept or not (is_sensitive_key(k) or k.startswith(_DROPPED_PREFIXES))}


async def spawn(argv: list[str], *, env: Mapping[str, str], cwd: str | Path | None = None,
                stdin: int | None = asyncio.subprocess.DEVNULL, stdout: int | None = asyncio.subprocess.PIPE,
                stderr: int | IO | None = asyncio.subprocess.STDOUT, **identity: Any) -> asyncio.subprocess.Process:
    """Start `argv` as the leader of a new session (its process group id is its pid); raises OSError.

    `identity`: `user`, `group`, `extra_groups` of subprocess, to run the child under another uid."""
    return await asyncio.create_subprocess_exec(
        *argv, cwd=None if cwd is None else str(cwd), env=dict(env), stdin=stdin, stdout=stdout, stderr=stderr,
        start_new_session=True, **identity)


def signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to the process group; False when none of it is left."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def kill_group(pgid: int, grace_s: float) -> None:
    """SIGTERM the group, wait up to `grace_s` for all of it to end, SIGKILL the rest (blocking).

    The whole group, not only its leader: a launcher that exits on SIGTERM can leave its
    training ranks behind holding the GPU and the port."""
    if not signal_group(pgid, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not signal_group(pgid, 0):
            return
        time.sleep(0.05)
    signal_group(pgid, signal.SIGKILL)


async def stop(proc: asyncio.subprocess.Process, grace_s: float) -> int:
    """End `proc`'s group (`kill_group` on a thread, safe inside a cancelled task) and reap the leader."""
    await asyncio.shield(asyncio.to_thread(kill_group, proc.pid, grace_s))
    return await proc.wait()


class LineSplitter:
    """Bytes in, lines out, with no limit on a line's length: of each line the first `keep` bytes are
    passed on (and `cut` says whether more were dropped), the rest is skipped without being held.

    `carriage_returns`: a `\\r` ends a line too (tqdm redraws its bar with it)."""

    def __init__(self, on_line: Callable[[str, bool], None], *, keep: int = 64 * 1024,
                 carriage_returns: bool = False):
        self.on_line = on_line
        self.keep = keep
        self.carriage_returns = carriage_returns
        self._line = bytearray()
        self._cut = False

    def feed(self, chunk: bytes) -> None:
        if self.carriage_returns:
            chunk = chunk.replace(b"\r", b"\n")
        pieces = chunk.split(b"\n")
        for n, piece in enumerate(pieces, 1):
            room = self.keep - len(self._line)
            self._line += piece[:max(room, 0)]
            self._cut = self._cut or len(piece) > room
            if n < len(pieces):  # a newline ended this piece
                self._emit()

    def close(self) -> None:
        if self._line or self._cut:
            self._emit()

    def _emit(self) -> None:
        self.on_line(self._line.decode("utf-8", "replace").rstrip(), self._cut)
        self._line.clear()
        self._cut = False


async def pump(stream: asyncio.StreamReader, splitter: LineSplitter, *, raw: IO[bytes] | None = None) -> None:
    """Read `stream` to its end in chunks: each chunk to `raw` (a log file) as it came, and into `splitter`."""
    while chunk := await stream.read(READ_CHUNK):
        if raw is not None:
            raw.write(chunk)
            raw.flush()
        splitter.feed(chunk)
    splitter.close()
