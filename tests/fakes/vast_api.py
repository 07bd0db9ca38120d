"""A local stand-in for vast.ai's instance REST API (reference/vastai-pyworker.md §9), for tests.

Routes under `/api/v0/`, all needing `Authorization: Bearer <key>` (else 401
`{"success": false, "error": "invalid_user_key", "msg": ...}`):
- `POST bundles/` -> `{"offers": [...]}` filtered by `{"field": {"eq"|"neq"|"gt"|"gte"|"lt"|"lte"|"in": v}}`,
  ordered by `order` (`[["dph_total", "asc"]]`), cut at `limit`; rented offers never match `rented: {eq: false}`.
- `PUT asks/<offer_id>/` `{"image"|"template_hash_id", "env", "disk", "onstart", "runtype", "label", ...}`
  -> `{"success": true, "new_contract": <instance id>}`; an unknown/rented offer, an unknown template or
  neither image nor template -> 400 `{"success": false, "error", "msg"}`.
- `GET instances/<id>/?owner=me` -> `{"instances": {...}}` (`{"instances": null}` once destroyed or
  unknown), with `actual_status` going null -> `loading` -> `running` after `loading_after` /
  `running_after` seconds, `public_ipaddr` with a trailing newline (as vast.ai sends it) and
  `ports` `{"<p>/tcp": [{"HostIp": "0.0.0.0", "HostPort": "<n>"}]}` for each `-p N:N` env key
  (or the template's), mapped through `port_map` so tests can point a port at a local server.
- `DELETE instances/<id>/` -> `{"success": true}`; unknown -> 404.
`inject(status, count, retry_after)` makes the next requests fail (429 / 5xx).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from tests.fakes.threaded_http import LocalService, reply_json

DEFAULT_OFFERS = [
    {"id": 1001, "machine_id": 11, "gpu_name": "RTX 4090", "num_gpus": 1, "gpu_ram": 24564, "dph_total": 0.42,
     "reliability2": 0.995, "inet_down": 900.0, "disk_space": 120.0, "geolocation": "Sweden, SE",
     "verified": True, "rentable": True, "rented": False},
    {"id": 1002, "machine_id": 12, "gpu_name": "RTX 4090", "num_gpus": 1, "gpu_ram": 24564, "dph_total": 0.35,
     "reliability2": 0.97, "inet_down": 500.0, "disk_space": 80.0, "geolocation": "US, TX",
     "verified": True, "rentable": True, "rented": False},
    {"id": 1003, "machine_id": 13, "gpu_name": "RTX 5090", "num_gpus": 1, "gpu_ram": 32607, "dph_total": 0.69,
     "reliability2": 0.99, "inet_down": 2000.0, "disk_space": 200.0, "geolocation": "Germany, DE",
     "verified": True, "rentable": True, "rented": False},
    {"id": 1004, "machine_id": 14, "gpu_name": "RTX 3090", "num_gpus": 1, "gpu_ram": 24576, "dph_total": 0.18,
     "reliability2": 0.99, "inet_down": 300.0, "disk_space": 60.0, "geolocation": "Canada, CA",
     "verified": False, "rentable": True, "rented": False},
    {"id": 1005, "machine_id": 15, "gpu_name": "A100 SXM4", "num_gpus": 1, "gpu_ram": 81920, "dph_total": 1.25,
     "reliability2": 0.999, "inet_down": 5000.0, "disk_space": 500.0, "geolocation": "US, CA",
     "verified": True, "rentable": True, "rented": False},
]

SWARMUI_TEMPLATE = {"7a42a1fc4f8062a63bbcdbbc9cd65b42": {"image": "vastai/swarmui:latest",
                                                         "env": "-p 7801:7801 -e SWARMUI_ARGS=--launch_mode none",
                                                         "onstart": "entrypoint.sh", "runtype": "jupyter_proxy ssh_proxy"}}
OPS = {"eq": lambda a, b: a == b, "neq": lambda a, b: a != b, "gt": lambda a, b: a is not None and a > b,
       "gte": lambda a, b: a is not None and a >= b, "lt": lambda a, b: a is not None and a < b,
       "lte": lambda a, b: a is not None and a <= b, "in": lambda a, b: a in b}


class FakeVastAPI(LocalService):

    methods = ("GET", "POST", "PUT", "DELETE")
    def __init__(self, *, api_key: str = "vast-fake-key-0123456789", offers: list[dict] | None = None,
                 templates: dict[str, dict] | None = None, loading_after: float = 0.2, running_after: float = 0.6,
                 port_map: dict[int, int] | None = None):
        self.api_key = api_key
        self.offers = [dict(o) for o in (offers or DEFAULT_OFFERS)]
        self.templates = templates if templates is not None else SWARMUI_TEMPLATE
        self.loading_after = loading_after
        self.running_after = running_after
        self.port_map = port_map or {}
        self.instances: dict[int, dict] = {}
        self.destroyed: list[int] = []
        self.requests: list[tuple[str, str, bool]] = []
        self.bodies: list[Any] = []
        self.lock = threading.Lock()
        self._faults: deque[tuple[int, float | None]] = deque()
        self._next_id = 29829389

    def inject(self, status: int, count: int = 1, retry_after: float | None = None) -> None:
        with self.lock:
            self._faults.extend([(status, retry_after)] * count)

    @property
    def url(self) -> str:
        """The server address, as VAST_URL takes it (the client appends /api/v0)."""
        return self.origin

    # -- behaviour -------------------------------------------------------------------------------------

    def search(self, query: dict) -> list[dict]:
        matches = []
        for offer in self.offers:
            ok = True
            for field, cond in query.items():
                if not isinstance(cond, dict):
                    continue  # order, type, limit, allocated_storage
                for op, wanted in cond.items():
                    if op not in OPS or not OPS[op](offer.get(field), wanted):
                        ok = False
            if ok:
                matches.append({k: v for k, v in offer.items()})
        for field, direction in reversed(query.get("order") or []):
            matches.sort(key=lambda o: o.get(field) or 0, reverse=direction == "desc")
        return matches[: int(query.get("limit") or 64)]

    def create(self, offer_id: int, body: dict) -> tuple[int, dict]:
        offer = next((o for o in self.offers if o["id"] == offer_id), None)
        if offer is None or offer["rented"]:
            return 400, {"success": False, "error": "no_such_ask", "msg": f"Instance type {offer_id} is no longer available."}
        template = None
        if body.get("template_hash_id"):
            template = self.templates.get(body["template_hash_id"])
            if template is None:
                return 400, {"success": False, "error": "invalid_args",
                             "msg": f"template {body['template_hash_id']} not found"}
        elif not body.get("image"):
            return 400, {"success": False, "error": "invalid_args", "msg": "image or template_hash_id required"}
        ports = [int(p) for p in re.findall(r"-p (\d+):\d+", (template or {}).get("env", ""))]
        ports += [int(m.group(1)) for k in (body.get("env") or {}) if (m := re.match(r"-p (\d+):\d+", k))]
        with self.lock:
            instance_id = self._next_id
            self._next_id += 1
            offer["rented"] = True
            self.instances[instance_id] = {
                "id": instance_id, "machine_id": offer["machine_id"], "gpu_name": offer["gpu_name"],
                "num_gpus": offer["num_gpus"], "dph_total": offer["dph_total"], "label": body.get("label"),
                "image_uuid": body.get("image") or template["image"], "ports_wanted": sorted(set(ports)),
                "created": time.monotonic(), "start_date": time.time(), "intended_status": "running",
                "extra_env": [[k, v] for k, v in (body.get("env") or {}).items() if not k.startswith("-p ")],
                "onstart": body.get("onstart") or (template or {}).get("onstart"), "disk_space": body.get("disk"),
                "offer_id": offer_id,
            }
        return 200, {"success": True, "new_contract": instance_id}

    def show(self, instance_id: int) -> dict | None:
        with self.lock:
            inst = self.instances.get(instance_id)
            if inst is None:
                return None
            age = time.monotonic() - inst["created"]
            status = None if age < self.loading_after else ("loading" if age < self.running_after else "running")
            out = {k: v for k, v in inst.items() if k not in ("created", "ports_wanted")}
            out.update(actual_status=status, cur_state="running", status_msg=f"status: {status}",
                       public_ipaddr="127.0.0.1\n" if status else None, ssh_host="ssh5.vast.ai", ssh_port=10000 + instance_id % 1000)
            out["ports"] = {f"{p}/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(self.port_map.get(p, 40000 + p))}]
                            for p in inst["ports_wanted"]} if status == "running" else {}
            return out

    # -- HTTP ------------------------------------------------------------------------------------------

    def _dispatch(self, h: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(h.path)
        segments = [s for s in parts.path.split("/") if s]
        authorized = h.headers.get("Authorization", "") == f"Bearer {self.api_key}"
        self.requests.append((method, parts.path, authorized))
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        if not authorized:
            return self._send(h, 401, {"success": False, "error": "invalid_user_key",
                                       "msg": "Invalid user key; please log in again."})
        with self.lock:
            fault = self._faults.popleft() if self._faults else None
        if fault is not None:
            status, retry_after = fault
            headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
            return self._send(h, status, {"success": False, "error": "rate_limited" if status == 429 else "server_error",
                                          "msg": "slow down" if status == 429 else "internal error"}, headers)
        if segments[:2] != ["api", "v0"] or len(segments) < 3:
            return self._send(h, 404, {"success": False, "error": "not_found", "msg": parts.path})
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            return self._send(h, 400, {"success": False, "error": "invalid_args", "msg": "body is not JSON"})
        self.bodies.append(body)
        route, rest = segments[2], segments[3:]
        if route == "bundles" and method == "POST":
            return self._send(h, 200, {"offers": self.search(body)})
        if route == "asks" and method == "PUT" and rest and rest[0].isdigit():
            status, reply = self.create(int(rest[0]), body)
            return self._send(h, status, reply)
        if route == "instances" and rest and rest[0].isdigit():
            instance_id = int(rest[0])
            if method == "GET":
                return self._send(h, 200, {"instances": self.show(instance_id)})
            if method == "DELETE":
                with self.lock:
                    inst = self.instances.pop(instance_id, None)
                    if inst is not None:
                        self.destroyed.append(instance_id)
                        for offer in self.offers:
                            if offer["id"] == inst["offer_id"]:
                                offer["rented"] = False
                if inst is None:
                    return self._send(h, 404, {"success": False, "error": "no_such_instance",
                                               "msg": f"instance {instance_id} not found"})
                return self._send(h, 200, {"success": True})
        return self._send(h, 404, {"success": False, "error": "not_found", "msg": f"{method} {parts.path}"})

    _send = staticmethod(reply_json)
