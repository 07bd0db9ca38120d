"""Output for humans (text, progress bars on stderr) or scripts (`--json`: one JSON document on stdout).

The tool's own keys are registered with `register_key`, and every line it prints has them
masked. Results keep their links intact (a signed download URL is what the user asked
for); error messages additionally go through the project's pattern-based redaction.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any

from common.redaction import MASK, redact_text, register_secret

_KEYS: set[str] = set()


def register_key(value: str) -> str:
    """Remember an API key so no output line or log record can show it."""
    if value:
        _KEYS.add(value)
        register_secret(value)
    return value


def mask_keys(text: str) -> str:
    for key in sorted(_KEYS, key=len, reverse=True):
        text = text.replace(key, MASK)
    return text


class CliError(Exception):
    """A failure to report as one clean line; `code` becomes the exit status."""

    def __init__(self, message: str, code: int = 1, **details: Any):
        super().__init__(message)
        self.message = message
        self.code = code
        self.details = details  # extra fields of the `--json` error document (e.g. `instance_id`)


class Console:
    def __init__(self, *, json_mode: bool = False, quiet: bool = False):
        self.json_mode = json_mode
        self.quiet = quiet
        self.interrupted: dict[str, Any] = {}  # what `left_running` knew when Ctrl-C came

    def info(self, message: str) -> None:
        """A human-readable line (stderr in `--json` mode, so stdout stays one JSON document)."""
        if self.quiet:
            return
        stream = sys.stderr if self.json_mode else sys.stdout
        print(mask_keys(message), file=stream, flush=True)

    def note(self, message: str) -> None:
        """Status chatter: always stderr."""
        if not self.quiet:
            print(mask_keys(message), file=sys.stderr, flush=True)

    def error(self, message: str) -> None:
        print("error: " + redact_text(mask_keys(message)), file=sys.stderr, flush=True)

    def result(self, data: Any, text: str | None = None) -> None:
        """The command's result: JSON document with `--json`, else `text` (or pretty JSON)."""
        if self.json_mode or text is None:
            print(mask_keys(json.dumps(data, indent=2, default=str)), flush=True)
        else:
            print(mask_keys(text), flush=True)

    @contextmanager
    def left_running(self, hint: str, *, errors: bool = True, **details: Any):
        """On Ctrl-C (and, with `errors`, an error) inside the block, say what keeps running (and billing)
        and how to stop it; even with `--quiet`, since silence here costs money. `details` (e.g.
        `instance_id`) go into the `--json` document of the error or interruption."""
        try:
            yield
        except KeyboardInterrupt:
            print(mask_keys(hint), file=sys.stderr, flush=True)
            self.interrupted = {**details, "hint": hint}
            raise
        except CliError as exc:
            if not errors:
                raise
            if hint not in exc.message:
                exc.message = f"{exc.message}\n{hint}"
            exc.details = {**details, "hint": hint, **exc.details}
            raise

    @contextmanager
    def progress(self, *, transfer: bool = False):
        """A rich progress display on stderr (disabled with `--json`/`--quiet` or off a terminal)."""
        from rich.console import Console as RichConsole
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        columns: list[Any] = [SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                              TextColumn("{task.percentage:>5.1f}%")]
        if transfer:
            columns += [DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()]
        else:
            columns += [TextColumn("{task.fields[status]}"), TimeElapsedColumn()]
        rich_console = RichConsole(stderr=True)
        disabled = self.json_mode or self.quiet or not rich_console.is_terminal
        with Progress(*columns, console=rich_console, transient=False, disable=disabled) as bar:
            yield bar
