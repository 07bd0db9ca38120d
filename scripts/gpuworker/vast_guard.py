"""The billing guard: destroy instances this tool created once they outlive `--max-hours` or sit
idle longer than `--max-idle`, so a forgotten GPU stops costing money.

`vast create` records each instance with its limits in a state file
(`$GPUWORKER_STATE_DIR/vast-instances.json`, default `~/.local/state/gpuworker/`), and starts
`gpuworker vast guard` as a detached process that outlives the terminal. Idle means SwarmUI's
`GetGlobalStatus` reports no live or waiting generation, no model loading and no backend
waiting, and the idle clock starts at creation, so boot time counts toward it. The guard
destroys for idleness only on such a positive reading: a SwarmUI it cannot see into (a token gate
answering 401/403, an untrusted certificate, no answer) may be working, so it is kept, and the
guard says why. An instance is tracked until vast.ai no longer lists it: a refused or unconfirmed
destroy is retried every round.
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

from scripts.gpuworker import units
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
    SwarmUI's own `RequiredAuthorization`, or vast's Instance Portal proxy with `OPEN_BUTTON_TOKEN`);
    nothing when unset."""
    token = os.environ.get("SWARM_TOKEN", "").strip()
    return {"Authorization": f"Bearer {register_key(token)}"} if token else {}


_TLS_PORTS: dict[str, str] = {}  # http://ip:port -> https://ip:port, for ports found speaking TLS


def app_url(url: str, *, timeout: float) -> str:
    """`url`, or its `https://` form when the port speaks TLS (vast's proxy with `ENABLE_HTTPS`: a Go
    server answers plain HTTP with 400 "Client sent an HTTP request to an HTTPS server"). Found out
    with one request *without* credentials, so a token never crosses the network in clear to a port
    that would have taken it over TLS."""
    if not url.startswith("http://"):
        return url
    if url not in _TLS_PORTS:
        resp = requests.get(f"{url}/", timeout=timeout, allow_redirects=False)
        speaks_tls = resp.status_code == 400 and "HTTP request to an HTTPS server" in resp.text
        _TLS_PORTS[url] = "https://" + url.removeprefix("http://") if speaks_tls else url
    return _TLS_PORTS[url]


def swarm_post(url: str, route: str, body: dict, *, timeout: float) -> tuple[requests.Response, str]:
    """POST to SwarmUI at `url` (made `https://` when the port speaks TLS, see `app_url`); the answer
    and the URL used. Certificates are verified (`REQUESTS_CA_BUNDLE` names extra ones to trust)."""
    url = app_url(url, timeout=timeout)
    return requests.post(f"{url}{route}", json=body, headers=swarm_headers(), timeout=timeout), url


def gate_hint(status: int) -> str:
    return (f"answers {status}: a token gate is in front of SwarmUI; export SWARM_TOKEN with its token "
            "(vast templates: the instance's OPEN_BUTTON_TOKEN, `echo $OPEN_BUTTON_TOKEN` over SSH, or the "
            "WEB_PASSWORD you created it with; the swarm-worker image: its SWARM_ACCESS_TOKEN)")


def swarm_busy(url: str, *, timeout: float = 10.0) -> tuple[bool | None, str]:
    """(True, …) when SwarmUI at `url` is working, (False, …) when it says it is idle, (None, why) when
    the tool cannot tell: refused (401/403), untrusted TLS, no answer or not SwarmUI's answer."""
    try:
        resp, url = swarm_post(url, "/API/GetNewSession", {}, timeout=timeout)
        if resp.status_code in (401, 403):
            return None, f"{url} {gate_hint(resp.status_code)}"
        sid = resp.json()["session_id"]
        resp, url = swarm_post(url, "/API/GetGlobalStatus", {"session_id": sid}, timeout=timeout)
        if resp.status_code in (401, 403):
            return None, f"{url} {gate_hint(resp.status_code)}"
        body = resp.json()
    except requests.exceptions.SSLError:
        return None, f"{url}: its TLS certificate is not trusted (set REQUESTS_CA_BUNDLE to vast's certificate)"
    except requests.RequestException as exc:
        return None, f"{url}: no answer ({type(exc).__name__})"
    except (ValueError, KeyError, TypeError):
        return None, f"{url}: not SwarmUI's answer"
    counts = body.get("status") if isinstance(body, dict) else None
    if not isinstance(counts, dict):
        return None, f"{url}: not SwarmUI's answer"
    loading = bool((body.get("backend_status") or {}).get("any_loading"))
    if loading or any(int(counts.get(k) or 0) > 0 for k in BUSY_COUNTS):
        return True, "SwarmUI busy"
    return False, "SwarmUI idle"


def destroy_tracked(api: VastApi, instance_id: int, record: dict, reason: str, state: str | None) -> dict[str, Any]:
    """Destroy and check: `destroyed` only once vast.ai no longer lists it; else `destroying` (vast said
    yes, still listed) or `destroy-failed` (vast said no); the record keeps `destroying` for the next round."""
    record["destroying"] = reason
    ok, msg = api.destroy_instance(instance_id)
    if api.show_instance(instance_id) is None:
        return {"id": instance_id, "action": "destroyed", "reason": reason, "status": state}
    if ok:
        return {"id": instance_id, "action": "destroying", "reason": f"{reason}; vast.ai still lists it, "
                                                                     "checking again next round", "status": state}
    return {"id": instance_id, "action": "destroy-failed", "reason": f"{reason}; vast.ai answered: {msg}; "
                                                                     "retrying next round", "status": state}


def check_instance(api: VastApi, instance_id: int, record: dict, *, now: float | None = None,
                   busy: Callable[[str], tuple[bool | None, str]] = swarm_busy) -> dict[str, Any]:
    """One guard round for one instance: `{"id", "action": keep|destroyed|destroying|destroy-failed|gone,
    "reason", ...}`. `record` is updated in place (`last_active` when busy, `destroying` once doomed)."""
    now = time.time() if now is None else now
    info = api.show_instance(instance_id)
    if info is None:
        if record.get("destroying"):
            return {"id": instance_id, "action": "destroyed", "reason": record["destroying"]}
        return {"id": instance_id, "action": "gone", "reason": "vast.ai no longer lists it"}
    state = info.get("actual_status")
    if record.get("destroying"):
        return destroy_tracked(api, instance_id, record, record["destroying"], state)
    age_h = (now - float(record["created_at"])) / 3600
    max_hours = record.get("max_hours")
    if max_hours and age_h >= float(max_hours):
        reason = f"max_hours: up {units.duration(age_h * 3600)}, limit {units.duration(float(max_hours) * 3600)}"
        return destroy_tracked(api, instance_id, record, reason, state)
    result: dict[str, Any] = {"id": instance_id, "action": "keep", "status": state, "age_hours": round(age_h, 3)}
    max_idle = record.get("max_idle_minutes")
    if max_idle:
        url = instance_url(info, int(record.get("port") or 7801)) if state == RUNNING else None
        working, seen = busy(url) if url else (None, f"instance {state or 'starting'}, SwarmUI not reachable yet")
        if working:
            record["last_active"] = now
        idle_s = now - float(record.get("last_active") or record["created_at"])
        if idle_s >= float(max_idle) * 60:
            if working is False:
                reason = f"max_idle: {seen} for {units.duration(idle_s)}, limit {units.duration(float(max_idle) * 60)}"
                return destroy_tracked(api, instance_id, record, reason, state)
            result["note"] = f"past the idle limit, but kept: cannot tell whether it works ({seen})"
    return result
def guard_round(api: VastApi, state: GuardState, ids: list[int] | None = None,
                busy: Callable[[str], tuple[bool | None, str]] = swarm_busy) -> list[dict]:
    """Check every tracked instance (or those in `ids`); only destroyed/gone ones leave the state file."""
    results = []
    for key, record in state.read().items():
        instance_id = int(key)
        if ids and instance_id not in ids:
            continue
        try:
            result = check_instance(api, instance_id, record, busy=busy)
        except CliError as exc:  # vast.ai unreachable this round: try again next round
            result = {"id": instance_id, "action": "error", "reason": exc.message}
        with state.edit() as data:
            if result["action"] in ("destroyed", "gone"):
                data.pop(key, None)
            elif key in data:
                data[key]["last_active"] = record.get("last_active")
                if record.get("destroying"):
                    data[key]["destroying"] = record["destroying"]
        results.append(result)
    return results
