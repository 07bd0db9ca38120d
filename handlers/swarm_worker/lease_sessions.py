"""Which SwarmUI sessions each gateway token generated with, so a lease's end stops its own work only.

SwarmUI's `InterruptAll` stops either the calling session or every session of the user, and every
caller of this SwarmUI is the same user (`local`): `other_sessions: true` at a lease's end would
also stop the worker's concurrent `generate` jobs (mcmonkeyprojects/SwarmUI
src/WebAPI/BasicAPIFeatures.cs:597-614). The gateway notes the session id of each generation
request per token; the lease's end interrupts those sessions one by one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping


def session_of(body: bytes | str, headers: Mapping[str, str] | None = None) -> str | None:
    """The session id a SwarmUI API request names: `session_id` in its JSON body, else `X-Session-ID`
    (mcmonkeyprojects/SwarmUI src/WebAPI/API.cs:101-113)."""
    try:
        data = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError):
        data = None
    sid = data.get("session_id") if isinstance(data, dict) else None
    if sid is None and headers is not None:
        sid = headers.get("X-Session-ID")
    return str(sid)[:200] if sid else None


class SessionLedger:
    """token -> the session ids its generation requests used."""

    def __init__(self) -> None:
        self._sessions: dict[str, set[str]] = {}

    def note(self, token: str, sid: str | None) -> None:
        if sid:
            self._sessions.setdefault(token, set()).add(sid)

    def pop(self, token: str) -> set[str]:
        return self._sessions.pop(token, set())
