"""`gpuworker` command line: argument parsing and the one place errors become exit codes.

Exit status: 0 success; 1 the remote side failed (job FAILED, API error, download failed);
2 bad usage or input (named before anything is sent); 3 timed out waiting (the remote work
may still be running); 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys

from common.redaction import redact_text
from scripts.gpuworker import models_cmds, runpod_cmds, swarm_cmds, vast_cmds
from scripts.gpuworker.console import CliError, Console


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print the result as one JSON document on stdout")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress or status lines")
    parser = argparse.ArgumentParser(
        prog="gpuworker",
        description="Drive the GPU worker images: RunPod endpoint jobs, SwarmUI workers, vast.ai instances, "
                    "model volumes.")
    sub = parser.add_subparsers(dest="group", required=True, metavar="GROUP")
    runpod_cmds.register(sub, common)
    swarm_cmds.register(sub, common)
    vast_cmds.register(sub, common)
    models_cmds.register(sub, common)
    return parser


def _pop_json_flag(argv: list[str]) -> tuple[list[str], bool]:
    """`--json` anywhere on the line (before a `--`), not only after the command."""
    end = argv.index("--") if "--" in argv else len(argv)
    found = "--json" in argv[:end]
    return [a for i, a in enumerate(argv) if i >= end or a != "--json"], found


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv, json_flag = _pop_json_flag(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    console = Console(json_mode=json_flag, quiet=args.quiet)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_RedactingFormatter(handler.formatter))
    try:
        return int(args.func(args, console) or 0)
    except CliError as exc:
        console.error(exc.message)
        if console.json_mode:  # scripts reading stdout get a document either way
            console.result({"error": redact_text(exc.message), "exit_code": exc.code, **exc.details})
        return exc.code
    except KeyboardInterrupt:
        console.error("interrupted")
        if console.json_mode:
            console.result({"error": "interrupted", "exit_code": 130, **console.interrupted})
        return 130


class _RedactingFormatter(logging.Formatter):
    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(self.inner.format(record))


if __name__ == "__main__":
    sys.exit(main())
