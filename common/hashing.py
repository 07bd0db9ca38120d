"""sha256 of a file, read in chunks (models and outputs are often several GB)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

CHUNK = 8 << 20


def file_sha256(path: str | os.PathLike, on_bytes: Callable[[int], None] | None = None) -> str:
    """Hex sha256 of the file; `on_bytes(n)` is called after each chunk (for progress bars)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            if on_bytes:
                on_bytes(len(chunk))
    return digest.hexdigest()
