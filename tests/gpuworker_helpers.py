"""Shared helpers for the `gpuworker` CLI tests: run `main(argv)` in-process and capture what it prints."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from scripts.gpuworker.cli import main


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
