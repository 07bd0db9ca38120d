"""Settings objects declared as dataclass fields that name their environment variable, and the
markdown table of them that the docs carry (`python -m scripts.gen_docs`).

A field made with `setting(env, default, doc, parse=...)` is read by `read_env`; one with
`parse=None` is documented here but computed by its class's `from_env` (aliases, values derived
from other settings). Standard library only: the vast.ai fronts' venvs have no pydantic.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, Field, field, fields
from typing import Any


def text(raw: str) -> str:
    return raw


def optional(raw: str) -> str | None:
    return raw or None


def number(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError("expected a number") from None


def integer(raw: str) -> int:
    return int(number(raw))


def flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected 1/true/yes or 0/false/no")


def choice(*allowed: str) -> Callable[[str], str]:
    """A parser accepting one of `allowed` (case-insensitive)."""
    def parse(raw: str) -> str:
        value = raw.lower()
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return value
    return parse


def setting(env: str, default: Any = MISSING, doc: str = "", *, parse: Callable[[str], Any] | None = text,
            shown: str | None = None, aliases: tuple[str, ...] = (), default_factory: Any = MISSING, **meta: Any):
    """A field read from `env` (`aliases`: other names of it, for the docs); `shown` is the default as the
    docs say it (else the value itself); `parse=None`: the class's `from_env` computes it."""
    metadata = {"env": env, "doc": doc, "parse": parse, "shown": shown, "aliases": aliases, **meta}
    return field(default=default, default_factory=default_factory, metadata=metadata)


def read_env(cls: type, env: Mapping[str, str] | None = None, *, only: Iterable[str] | None = None,
             blank_is_unset: bool = False) -> dict[str, Any]:
    """The fields of `cls` whose variable is set in `env` (default: `os.environ`), parsed, by field name;
    `only`: these field names. A bad value is a ValueError naming its variable."""
    env = os.environ if env is None else env
    wanted = None if only is None else set(only)
    values = {}
    for f in fields(cls):
        if "env" not in f.metadata or f.metadata["parse"] is None or (wanted is not None and f.name not in wanted):
            continue
        raw = env.get(f.metadata["env"])
        if raw is None or (blank_is_unset and not raw.strip()):
            continue
        try:
            values[f.name] = f.metadata["parse"](raw.strip())
        except ValueError as exc:
            raise ValueError(f"environment variable {f.metadata['env']}: {exc} (got {raw!r})") from None
    return values


def variable_cell(name: str, aliases: Iterable[str] = ()) -> str:
    others = [f"`{a}`" for a in aliases]
    return f"`{name}`" + (f" (or {', '.join(others)})" if others else "")


def default_cell(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, list | tuple):
        value = " ".join(map(str, value))
    elif isinstance(value, float):
        value = f"{value:g}"
    return f"`{value}`" if value != "" else "empty"


def cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def markdown_table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def field_rows(cls: type, *extra: Callable[[Field], str]) -> list[list[str]]:
    """(variable, default, *extra columns, meaning) of each field of `cls` that names a variable."""
    rows = []
    for f in fields(cls):
        m = f.metadata
        if "env" not in m:
            continue
        shown = m["shown"] if m["shown"] is not None else default_cell(f.default)
        rows.append([variable_cell(m["env"], m["aliases"]), shown, *(column(f) for column in extra), m["doc"]])
    return rows
