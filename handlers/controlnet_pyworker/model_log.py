"""MODEL_LOG, the file the vast.ai PyWorker front tails, and the marker lines it acts on.

Only the model server writes it (start, ready, fatal, one line per request without user text),
so no prompt can forge a marker. Marker lines start with the marker (vast.ai documents its log
actions as prefix matches); fatal ones name their cause: `MODEL_SERVER_FATAL <cause>: <detail>`.
Standard library only: the front (its own venv) imports the markers from here.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

READY_MARKER = "MODEL_SERVER_READY"
FATAL_MARKER = "MODEL_SERVER_FATAL"
# The causes a fatal line names; the front reports the matching `FATAL_MARKER cause`.
FATAL_CAUSES = ("preload failed", "cannot start", "device unusable")


class ModelLog:
    """The file the PyWorker tails: truncated at start, one flushed line per event."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        self._append(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}")

    def marker(self, marker: str, text: str) -> None:
        """A line the front acts on: the marker first, the time last."""
        self._append(f"{marker} {text} at={time.strftime('%Y-%m-%dT%H:%M:%S')}")

    def fatal(self, cause: str, detail: str) -> None:
        self.marker(FATAL_MARKER, f"{cause}: {detail}")

    def _append(self, line: str) -> None:
        line = line.replace("\n", " ").replace("\r", " ")
        with self._lock, open(self.path, "a") as f:
            f.write(line + "\n")
