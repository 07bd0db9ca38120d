"""vast.ai's REST API for instances (https://docs.vast.ai/api-reference), with `requests`.

The `vastai` package is not used here: its exact pins clash with `runpod`, so it lives in
its own virtual environment; these few routes are plain JSON. Routes and fields follow the
`vastai` CLI (`vast-ai/vast-cli` `vast.py`) and vast's API reference (https://docs.vast.ai/api).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import requests

from scripts.gpuworker.console import CliError, register_key
from scripts.gpuworker.http import JsonApi

DEFAULT_SERVER = "https://console.vast.ai"
RUNNING = "running"
DEFAULT_DISK_GB = 60.0  # what `create --image` rents and `offers` prices with, unless --disk says otherwise


def key_files() -> list[Path]:
    """Where the `vastai` CLI keeps its key, in the order it reads them: a 2FA session key, the API key,
    the legacy `~/.vast_api_key` (vast.py:241-247, 9769-9777; `xdg_config_home()` is `$XDG_CONFIG_HOME`
    or `~/.config`)."""
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "vastai"
    return [config / "vast_tfa_key", config / "vast_api_key", Path.home() / ".vast_api_key"]


def api_key() -> str:
    """`VAST_API_KEY`, else the key file `vastai set api-key` wrote."""
    key = os.environ.get("VAST_API_KEY", "").strip()
    if not key:
        for path in key_files():
            if path.is_file():
                key = path.read_text().strip()
                if key:
                    break
    if not key:
        raise CliError("no vast.ai API key: export VAST_API_KEY, or run `vastai set api-key …` (read from "
                       f"{key_files()[1]}); it is never printed", 2)
    return register_key(key)


def base_url(flag: str | None) -> str:
    """`--base-url`, else env `VAST_URL` (as the vastai SDK reads it), else vast.ai; `/api/v0` appended."""
    url = (flag or os.environ.get("VAST_URL") or DEFAULT_SERVER).rstrip("/")
    return url if url.endswith("/api/v0") else url + "/api/v0"


def offer_query(*, gpu: str | None, num_gpus: int, min_vram_gb: float | None, max_price: float | None,
                min_reliability: float | None, disk_gb: float, verified: bool, limit: int) -> dict:
    """The `/bundles/` search body, as `vastai search offers` builds it (vast.py:4341-4383): its default
    filters, `reliability` (the field's current name; `reliability2` is retired, vast.py:1023-1041),
    GB as the API's MB, and `allocated_storage` so `dph_total` includes the disk `create` will rent."""
    q: dict[str, Any] = {"external": {"eq": False}, "rentable": {"eq": True}, "rented": {"eq": False},
                         "num_gpus": {"eq": num_gpus}, "disk_space": {"gte": disk_gb},
                         "order": [["dph_total", "asc"]], "type": "on-demand", "limit": limit,
                         "allocated_storage": disk_gb}
    if verified:
        q["verified"] = {"eq": True}
    if gpu:
        q["gpu_name"] = {"eq": gpu.replace("_", " ")}
    if min_vram_gb is not None:
        q["gpu_ram"] = {"gte": int(min_vram_gb * 1000)}
    if max_price is not None:
        q["dph_total"] = {"lte": max_price}
    if min_reliability is not None:
        q["reliability"] = {"gte": min_reliability}
    return q


def instance_url(info: dict, port: int, scheme: str = "http") -> str | None:
    """`http://<public ip>:<host port mapped to port>`, or None while the port is not mapped yet."""
    ip = (info.get("public_ipaddr") or "").strip()
    mapped = (info.get("ports") or {}).get(f"{port}/tcp") or []
    host_port = mapped[0].get("HostPort") if mapped and isinstance(mapped[0], dict) else None
    if not ip or not host_port:
        return None
    return f"{scheme}://{ip}:{host_port}"


class VastApi:
    def __init__(self, *, api_key: str, base: str | None = None, **api_kwargs: Any):
        self.base = base_url(base)
        api_kwargs.setdefault("timeout", 20.0)  # vast.ai answers in seconds; a hung call is retried, visibly
        auth = {"Authorization": f"Bearer {api_key}"}
        self.api = JsonApi(self.base, auth_header=auth, service="vast.ai", **api_kwargs)
        self.api_v1 = JsonApi(self.base.removesuffix("/api/v0") + "/api/v1", auth_header=auth, service="vast.ai",
                              **api_kwargs)

    def search_offers(self, query: dict) -> list[dict]:
        return list(self.api.request("POST", "bundles/", json_body=query).get("offers") or [])

    def template(self, hash_id: str) -> dict | None:
        """A template by its hash (`vastai search templates 'hash_id=…'`, vast.py:4517-4540)."""
        reply = self.api.request("GET", "template/", params={"select_cols": json.dumps(["*"]),
                                                             "select_filters": json.dumps({"hash_id": {"eq": hash_id}})})
        found = reply.get("templates") or [] if isinstance(reply, dict) else []
        return found[0] if found else None

    def create_instance(self, offer_id: int, body: dict) -> int:
        """`PUT /asks/<offer>/` (vast.py:2477-2533); raises `MaybeCreated` when the answer was lost."""
        reply = self.api.request("PUT", f"asks/{offer_id}/", json_body=body, creates=True)
        if not reply.get("success") or not reply.get("new_contract"):
            raise CliError(f"vast.ai did not create an instance from offer {offer_id}: "
                           f"{reply.get('msg') or reply.get('error') or reply}")
        return int(reply["new_contract"])

    def show_instance(self, instance_id: int) -> dict | None:
        """The instance, or None when vast.ai no longer knows it (`{"instances": null}`, vast.py:5711-5719)."""
        reply = self.api.request("GET", f"instances/{instance_id}/", params={"owner": "me"})
        info = reply.get("instances") if isinstance(reply, dict) else None
        return info or None

    def list_instances(self, filters: dict | None = None) -> list[dict]:
        """All your instances, paged 25 at a time (`GET /api/v1/instances/`, vast.py:5727-5750)."""
        rows: list[dict] = []
        params = {"select_filters": json.dumps(filters or {}), "order_by": json.dumps([{"col": "id", "dir": "asc"}]),
                  "limit": 25}
        while True:
            reply = self.api_v1.request("GET", "instances/", params=params)
            rows.extend(reply.get("instances") or [])
            if not reply.get("next_token"):
                return rows
            params["after_token"] = reply["next_token"]

    def destroy_instance(self, instance_id: int) -> tuple[bool, str]:
        """`DELETE /instances/<id>/`: (True, "") only on `{"success": true}`; else (False, vast's message).
        404 (no such instance) and `success: false` answers are both "not destroyed" (vast.py:3107-3122)."""
        reply = self.api.request("DELETE", f"instances/{instance_id}/", json_body={}, ok_status=(400, 404))
        if isinstance(reply, dict) and reply.get("success") is True:
            return True, ""
        msg = (reply.get("msg") or reply.get("error") or "") if isinstance(reply, dict) else str(reply)
        return False, str(msg) or "vast.ai did not say it destroyed it"

    def manage(self, instance_id: int, body: dict) -> None:
        """`PUT /instances/<id>/` with `{"state": …}` or `{"label": …}` (vast.py:3404-3420, 3964-3987)."""
        reply = self.api.request("PUT", f"instances/{instance_id}/", json_body=body)
        if not (isinstance(reply, dict) and reply.get("success")):
            msg = reply.get("msg") or reply.get("error") if isinstance(reply, dict) else reply
            raise CliError(f"vast.ai refused {json.dumps(body)} for instance {instance_id}: {msg}")

    def logs(self, instance_id: int, *, tail: int | None, grep: str | None, timeout: float = 30.0) -> str:
        """`PUT /instances/request_logs/<id>/` names a link the logs are uploaded to; poll it (vast.py:3650-3690)."""
        body: dict[str, Any] = {}
        if tail:
            body["tail"] = str(tail)
        if grep:
            body["filter"] = grep
        reply = self.api.request("PUT", f"instances/request_logs/{instance_id}/", json_body=body)
        url = reply.get("result_url") if isinstance(reply, dict) else None
        if not url:
            raise CliError(f"vast.ai gave no log link for instance {instance_id}: {reply}")
        deadline = time.monotonic() + timeout
        while True:
            try:
                resp = requests.get(url, timeout=(5, 30))
                if resp.status_code == 200:
                    return resp.text
            except requests.RequestException:
                pass
            if time.monotonic() >= deadline:
                raise CliError(f"the logs of instance {instance_id} did not appear within {timeout:g} s", 3)
            time.sleep(0.3)
