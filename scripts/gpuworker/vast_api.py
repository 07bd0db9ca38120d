"""vast.ai's REST API for instances (reference/vastai-pyworker.md §9), with `requests`.

The `vastai` package is not used here: its exact pins clash with `runpod`, so it lives in
its own virtual environment; these few routes are plain JSON.
"""

from __future__ import annotations

import os
from typing import Any

from scripts.gpuworker.console import CliError, register_key
from scripts.gpuworker.http import JsonApi

DEFAULT_SERVER = "https://console.vast.ai"
RUNNING = "running"


def api_key_from_env() -> str:
    key = os.environ.get("VAST_API_KEY", "").strip()
    if not key:
        raise CliError("VAST_API_KEY is not set: export your vast.ai API key (it is never printed)", 2)
    return register_key(key)


def base_url(flag: str | None) -> str:
    """`--base-url`, else env `VAST_URL` (as the vastai SDK reads it), else vast.ai; `/api/v0` appended."""
    url = (flag or os.environ.get("VAST_URL") or DEFAULT_SERVER).rstrip("/")
    return url if url.endswith("/api/v0") else url + "/api/v0"


def offer_query(*, gpu: str | None, num_gpus: int, min_vram_gb: float | None, max_price: float | None,
                min_reliability: float | None, min_disk_gb: float | None, verified: bool, limit: int) -> dict:
    """The `/bundles/` search body (the CLI's GB are ×1000 MB in the API)."""
    q: dict[str, Any] = {"rentable": {"eq": True}, "rented": {"eq": False}, "num_gpus": {"eq": num_gpus},
                         "order": [["dph_total", "asc"]], "type": "on-demand", "limit": limit}
    if verified:
        q["verified"] = {"eq": True}
    if gpu:
        q["gpu_name"] = {"eq": gpu.replace("_", " ")}
    if min_vram_gb is not None:
        q["gpu_ram"] = {"gte": int(min_vram_gb * 1000)}
    if max_price is not None:
        q["dph_total"] = {"lte": max_price}
    if min_reliability is not None:
        q["reliability2"] = {"gte": min_reliability}
    if min_disk_gb is not None:
        q["disk_space"] = {"gte": min_disk_gb}
        q["allocated_storage"] = min_disk_gb
    return q


def instance_url(info: dict, port: int) -> str | None:
    """`http://<public ip>:<host port mapped to port>`, or None while the port is not mapped yet."""
    ip = (info.get("public_ipaddr") or "").strip()
    mapped = (info.get("ports") or {}).get(f"{port}/tcp") or []
    host_port = mapped[0].get("HostPort") if mapped and isinstance(mapped[0], dict) else None
    if not ip or not host_port:
        return None
    return f"http://{ip}:{host_port}"


class VastApi:
    def __init__(self, *, api_key: str, base: str | None = None, **api_kwargs: Any):
        self.base = base_url(base)
        self.api = JsonApi(self.base, auth_header={"Authorization": f"Bearer {api_key}"}, service="vast.ai",
                           **api_kwargs)

    def search_offers(self, query: dict) -> list[dict]:
        return list(self.api.request("POST", "bundles/", json_body=query).get("offers") or [])

    def create_instance(self, offer_id: int, body: dict) -> int:
        reply = self.api.request("PUT", f"asks/{offer_id}/", json_body=body, creates=True)
        if not reply.get("success") or not reply.get("new_contract"):
            raise CliError(f"vast.ai did not create an instance from offer {offer_id}: "
                           f"{reply.get('msg') or reply.get('error') or reply}")
        return int(reply["new_contract"])

    def show_instance(self, instance_id: int) -> dict | None:
        """The instance, or None when vast.ai no longer knows it (destroyed)."""
        reply = self.api.request("GET", f"instances/{instance_id}/", params={"owner": "me"}, ok_status=(404,))
        info = reply.get("instances") if isinstance(reply, dict) else None
        return info or None

    def destroy_instance(self, instance_id: int) -> dict:
        return self.api.request("DELETE", f"instances/{instance_id}/", ok_status=(404,))
