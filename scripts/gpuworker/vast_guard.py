"""The billing guard: destroy instances this tool created once they outlive `--max-hours` or sit
idle longer than `--max-idle`, so a forgotten GPU stops costing money.

`vast create` records each instance with its limits in a state file
(`$GPUWORKER_STATE_DIR/vast-instances.json`, default `~/.local/state/gpuworker/`), and starts
`gpuworker vast guard` as a detached process that outlives the terminal. Idle means SwarmUI's
`GetGlobalStatus` reports no live or waiting generation, no model loading and no backend
waiting; an instance whose SwarmUI does not answer counts as idle too (nothing is being
made), and the idle clock starts at creation, so boot time counts toward it.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from scripts.gpuworker.console import CliError, register_key
from scripts.gpuworker.vast_api import RUNNING, VastApi, instance_url

BUSY_COUNTS = ("live_gens", "waiting_gens", "loading_models", "waiting_backends")


def state_dir() -> Path:
    root = os.environ.get("GPUWORKER_STATE_DIR") or Path.home() / ".local" / "state" / "gpuworker"
    return Path(root)


class GuardState:
    """`{instance_id: {created_at, max_hours, max_idle_minutes, last_active, port, label, base}}`, file-locked."""

    def __init__(self, directory: Path | None = None):
        self.dir = directory or state_dir()
        self.path = self.dir / "vast-instances.json"

    @contextmanager
    def edit(self) -> Iterator[dict[str, dict]]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".vast-instances.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._read()
            yield data
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=2))
            os.replace(tmp, self.path)

    def _read(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            raise CliError(f"guard state {self.path} is not valid JSON; fix or delete it") from None
        return data if isinstance(data, dict) else {}

    def read(self) -> dict[str, dict]:
        return self._read()

    def add(self, instance_id: int, record: dict) -> None:
        with self.edit() as data:
            data[str(instance_id)] = record

    def remove(self, instance_id: int) -> bool:
        with self.edit() as data:
            return data.pop(str(instance_id), None) is not None


def swarm_headers() -> dict[str, str]:
    """`Authorization: Bearer $SWARM_TOKEN` for a SwarmUI behind a token gate (this project's gateway,
    or SwarmUI's own `RequiredAuthorization`); nothing when unset."""
    token = os.environ.get("SWARM_TOKEN", "").strip()
    return {"Authorization": f"Bearer {register_key(token)}"} if token else {}


def swarm_busy(url: str, *, timeout: float = 10.0) -> bool | None:
    """True when SwarmUI at `url` is working, False when idle, None when it does not answer."""
    headers = swarm_headers()
    try:
        sid = requests.post(f"{url}/API/GetNewSession", json={}, headers=headers, timeout=timeout).json()["session_id"]
        body = requests.post(f"{url}/API/GetGlobalStatus", json={"session_id": sid}, headers=headers,
                             timeout=timeout).json()
    except (requests.RequestException, ValueError, KeyError, TypeError):
        return None
    counts = body.get("status") if isinstance(body, dict) else None
    if not isinstance(counts, dict):
        return None
    loading = bool((body.get("backend_status") or {}).get("any_loading"))
    return loading or any(int(counts.get(k) or 0) > 0 for k in BUSY_COUNTS)


def check_instance(api: VastApi, instance_id: int, record: dict, *, now: float | None = None,
                   busy: Callable[[str], bool | None] = swarm_busy) -> dict[str, Any]:
    """One guard round for one instance: `{"id", "action": keep|destroyed|gone, "reason", ...}`.

    `record["last_active"]` is updated in place when SwarmUI is busy.
    """
    now = time.time() if now is None else now
    info = api.show_instance(instance_id)
    if info is None:
        return {"id": instance_id, "action": "gone", "reason": "vast.ai no longer lists it"}
    age_h = (now - float(record["created_at"])) / 3600
    reason = None
    max_hours = record.get("max_hours")
    if max_hours and age_h >= float(max_hours):
        reason = f"max_hours: up {age_h:.2f} h, limit {float(max_hours):g} h"
    max_idle = record.get("max_idle_minutes")
    state = info.get("actual_status")
    if reason is None and max_idle:
        url = instance_url(info, int(record.get("port") or 7801)) if state == RUNNING else None
        working = busy(url) if url else None
        if working:
            record["last_active"] = now
        idle_min = (now - float(record.get("last_active") or record["created_at"])) / 60
        if idle_min >= float(max_idle):
            seen = "SwarmUI idle" if working is False else f"SwarmUI not answering (instance {state or 'starting'})"
            reason = f"max_idle: {seen} for {idle_min:.1f} min, limit {float(max_idle):g} min"
    if reason is None:
        return {"id": instance_id, "action": "keep", "status": state, "age_hours": round(age_h, 3)}
    api.destroy_instance(instance_id)
    return {"id": instance_id, "action": "destroyed", "reason": reason, "status": state}


def guard_round(api: VastApi, state: GuardState, ids: list[int] | None = None,
                busy: Callable[[str], bool | None] = swarm_busy) -> list[dict]:
    """Check every tracked instance (or those in `ids`); destroyed/gone ones leave the state file."""
    results = []
    for key, record in state.read().items():
        instance_id = int(key)
        if ids and instance_id not in ids:
            continue
        try:
            result = check_instance(api, instance_id, record, busy=busy)
        except CliError as exc:  # vast.ai unreachable this round: try again next round
            results.append({"id": instance_id, "action": "error", "reason": exc.message})
            continue
        with state.edit() as data:
            if result["action"] in ("destroyed", "gone"):
                data.pop(key, None)
            elif key in data:
                data[key]["last_active"] = record.get("last_active")
        results.append(result)
    return results
