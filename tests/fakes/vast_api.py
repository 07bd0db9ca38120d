"""A local stand-in for vast.ai's REST API (https://docs.vast.ai/api-reference), for tests.

What it mimics, and where that behaviour is written down. `CLI` is `vast-ai/vast-cli` `vast.py` at
55679830a2c2adcf5c7fad08bf08717a9591062a; `DOCS` is `vast-ai/docs` at
c624622622496828c1ae58edec481bba1f5d675d, the sources of https://docs.vast.ai (a page `x/y.mdx` is
https://docs.vast.ai/x/y; the endpoint YAMLs make https://docs.vast.ai/api-reference). Pages used:
https://docs.vast.ai/api-reference/creating-instances-with-api,
https://docs.vast.ai/api-reference/creating-and-using-templates-with-api,
https://docs.vast.ai/api-reference/rate-limits-and-errors, https://docs.vast.ai/cli/reference/show-instances.

- Auth: `Authorization: Bearer <key>` on every `/api/...` route, else 401
  `{"success": false, "error": "auth_error", "msg": "Invalid user key"}`
  (DOCS api-reference/openapi/yaml/show_instance.yaml, 401 example; CLI vast.py:631-636).
- Errors: `{"success": false, "error", "msg"}` (https://docs.vast.ai/api-reference/rate-limits-and-errors).
  429 answers are plain text `API requests too frequent endpoint threshold=…` **without** `Retry-After`
  ("The API does not currently set standard rate-limit headers", same page); `inject(429)`; `inject(500, route=…)` for other failures.
- `POST /api/v0/bundles/` (CLI vast.py:4341-4410 `search__offers`): `{"field": {"eq"|"neq"|"gt"|"gte"|
  "lt"|"lte"|"in"|"notin": v}}` filters over the offer fields the CLI knows (vast.py:979-1045
  `offers_fields`: the machine score is `reliability`; `reliability2` is commented out there); other
  fields are ignored here. `order`, `limit`, and `allocated_storage` (GB the price is quoted for,
  CLI default 5, vast.py:4244, 4379): `dph_total = dph_base + storage_cost * allocated_storage / 720`
  (`storage_cost` is $/GB/month, vast.py:4332).
- `GET /api/v0/template/?select_filters=…` -> `{"success", "templates_found", "templates": [...]}`
  (CLI vast.py:4517-4540 `search__templates`; DOCS api-reference/openapi/yaml/search_templates.yaml).
- `PUT /api/v0/asks/<offer>/` creates an instance (CLI vast.py:2477-2533 `create__instance`;
  DOCS api-reference/openapi/yaml/create_instance.yaml, api-reference/creating-instances-with-api.mdx):
  - with `template_hash_id`, scalar request fields (image, disk, runtype, onstart, …) override the
    template's; `env` is merged, request keys winning (DOCS creating-and-using-templates-with-api.mdx
    "Precedence Rules"). The CLI leaves `runtype` out when a template is given (vast.py:2515-2519).
  - `runtype` omitted without a template: `ssh` unless `args`/`args_str` are given (create_instance.yaml).
    ssh/jupyter runtypes replace the image's entrypoint with vast's, which then runs `onstart`;
    `args` keeps the image's ENTRYPOINT, and there the CLI sends `--entrypoint` as `onstart`
    (vast.py:2486-2487), i.e. `onstart` *replaces* the entrypoint (DOCS creating-instances-with-api.mdx
    "Entrypoint Behavior"; https://vast.ai/docs/instance-setup/docker-execution). Recorded per
    instance as `entrypoint`: `image`, `onstart` (replaced by it) or `vast` (vast's, then onstart).
  - `disk` omitted: the template's `recommended_disk_space`, else 8 GB (creating-instances-with-api.mdx).
  - unknown offer -> 404 `no_such_ask`; a rented one -> 410 (create_instance.yaml); no image -> 400.
  - reply `{"success": true, "new_contract": <instance id>}`; `inject_create_drop()` makes the next
    create go through and the connection close before the answer (a lost reply).
- `GET /api/v0/instances/<id>/?owner=me` -> `{"instances": {...}}`, `{"instances": null}` when unknown
  (CLI vast.py:5697-5720 `show__instance`). `actual_status` null -> `loading` -> `running` after
  `loading_after` / `running_after` s; `set_status(id, "exited"|"offline"|...)` forces one of the
  documented states (DOCS cli/reference/show-instances.mdx table). `public_ipaddr` has a trailing
  newline (as vast.ai sends it); `ports` `{"<p>/tcp": [{"HostIp", "HostPort"}]}` for each `-p N:N`,
  mapped through `port_map` so tests can point a port at a local server.
- `GET /api/v1/instances/` paged, at most 25 a page, `select_filters` on stored columns, `next_token`
  (CLI vast.py:5727-5750 `_fetch_all_instances_v1`; DOCS api-reference/openapi/yaml/show_instances.yaml).
- `DELETE /api/v0/instances/<id>/` -> `{"success": true}`; unknown -> 404 `{"success": false, "error":
  "not_found", "msg": "Instance not found"}` (DOCS api-reference/openapi/yaml/destroy_instance.yaml).
  `refuse_destroy(n, msg)`: the next n answer 200 `{"success": false, "msg"}` (the CLI prints `msg`
  then, vast.py:3107-3122); `destroy_delay`: the instance stays listed that long after a success.
- `PUT /api/v0/instances/<id>/` `{"state": "stopped"|"running"}` or `{"label": …}` -> `{"success": true}`;
  unknown -> 404 `no_such_instance`; label over 1024 characters -> 400 `label_too_long`
  (CLI vast.py:3404-3420, 4002-4020; DOCS manage_instance.yaml, label_instance.yaml, stop_instance.yaml).
- `PUT /api/v0/instances/request_logs/<id>/` `{"tail"?, "filter"?}` -> `{"success": true, "result_url"}`;
  the log appears at `result_url` (no auth, like the S3 link) after `logs_after` s, 404 before
  (CLI vast.py:3650-3690 `logs` polls it; DOCS api-reference/openapi/yaml/logs.yaml).
"""

from __future__ import annotations

import base64
import json
import re
import shlex
import threading
import time
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.threaded_http import LocalService, reply, reply_json

DEFAULT_OFFERS = [
    {"id": 1001, "machine_id": 11, "gpu_name": "RTX 4090", "num_gpus": 1, "gpu_ram": 24564, "dph_base": 0.40,
     "storage_cost": 0.15, "reliability": 0.995, "inet_down": 900.0, "disk_space": 120.0,
     "geolocation": "Sweden, SE", "verified": True, "external": False, "rentable": True, "rented": False},
    {"id": 1002, "machine_id": 12, "gpu_name": "RTX 4090", "num_gpus": 1, "gpu_ram": 24564, "dph_base": 0.33,
     "storage_cost": 0.15, "reliability": 0.97, "inet_down": 500.0, "disk_space": 80.0, "geolocation": "US, TX",
     "verified": True, "external": False, "rentable": True, "rented": False},
    {"id": 1003, "machine_id": 13, "gpu_name": "RTX 5090", "num_gpus": 1, "gpu_ram": 32607, "dph_base": 0.67,
     "storage_cost": 0.2, "reliability": 0.99, "inet_down": 2000.0, "disk_space": 200.0,
     "geolocation": "Germany, DE", "verified": True, "external": False, "rentable": True, "rented": False},
    {"id": 1004, "machine_id": 14, "gpu_name": "RTX 3090", "num_gpus": 1, "gpu_ram": 24576, "dph_base": 0.16,
     "storage_cost": 0.1, "reliability": 0.99, "inet_down": 300.0, "disk_space": 60.0, "geolocation": "Canada, CA",
     "verified": False, "external": False, "rentable": True, "rented": False},
    {"id": 1005, "machine_id": 15, "gpu_name": "A100 SXM4", "num_gpus": 1, "gpu_ram": 81920, "dph_base": 1.2,
     "storage_cost": 0.3, "reliability": 0.999, "inet_down": 5000.0, "disk_space": 500.0, "geolocation": "US, CA",
     "verified": True, "external": False, "rentable": True, "rented": False},
    {"id": 1006, "machine_id": 16, "gpu_name": "RTX 4090", "num_gpus": 1, "gpu_ram": 24564, "dph_base": 0.30,
     "storage_cost": 0.15, "reliability": 0.995, "inet_down": 700.0, "disk_space": 40.0, "geolocation": "Spain, ES",
     "verified": True, "external": False, "rentable": True, "rented": False},
]

SWARMUI_HASH = "7a42a1fc4f8062a63bbcdbbc9cd65b42"
# vast's SwarmUI template as its fields read (DOCS creating-and-using-templates-with-api.mdx
# "Template Fields Reference"): a vast base image whose Instance Portal fronts SwarmUI on 7801 with the
# OPEN_BUTTON_TOKEN proxy (vast-ai/base-image README "Authentication"; DOCS guides/instances/connect/
# instance-portal.mdx "Configuration"), started by vast's entrypoint in jupyter mode.
SWARMUI_TEMPLATE = {
    "hash_id": SWARMUI_HASH, "id": 212345, "name": "SwarmUI", "image": "vastai/swarmui", "tag": "latest",
    "env": "-p 1111:1111 -p 7801:7801 -p 8080:8080 -e OPEN_BUTTON_PORT=1111 -e OPEN_BUTTON_TOKEN=1 "
           "-e PORTAL_CONFIG=\"localhost:1111:11111:/:Instance Portal|localhost:7801:17801:/:SwarmUI\"",
    "onstart": "entrypoint.sh", "runtype": "jupyter", "jup_direct": True, "use_ssh": True, "ssh_direct": True,
    "recommended_disk_space": 100.0,
}
OPS = {"eq": lambda a, b: a == b, "neq": lambda a, b: a != b, "gt": lambda a, b: a is not None and a > b,
       "gte": lambda a, b: a is not None and a >= b, "lt": lambda a, b: a is not None and a < b,
       "lte": lambda a, b: a is not None and a <= b, "in": lambda a, b: a in b, "notin": lambda a, b: a not in b}
# CLI vast.py:979-1045 offers_fields (the ones these offers carry)
OFFER_FIELDS = {"id", "machine_id", "gpu_name", "num_gpus", "gpu_ram", "dph_total", "storage_cost", "reliability",
                "inet_down", "disk_space", "geolocation", "verified", "external", "rentable", "rented"}
TOO_FREQUENT = "API requests too frequent endpoint threshold=4.5"


def template_runtype(template: dict) -> str:
    """A template's launch mode as an instance's `image_runtype` names it (DOCS show_instances.yaml example
    `ssh ssh_direc ssh_proxy`; CLI vast.py:2353-2371 `get_runtype`)."""
    kind = template.get("runtype") or "args"
    if kind == "jupyter":
        return "jupyter_direc ssh_direc ssh_proxy" if template.get("jup_direct") else "jupyter_proxy ssh_proxy"
    if kind == "ssh":
        return "ssh_direc ssh_proxy" if template.get("ssh_direct") else "ssh_proxy"
    return kind


def docker_env(options: str) -> dict[str, str]:
    """`-e K=V -p N:N` docker options as the API's env object (`{"K": "V", "-p N:N": "1"}`, CLI vast.py:8820-8850 parse_env)."""
    env: dict[str, str] = {}
    words = shlex.split(options or "")
    for flag, value in zip(words[::2], words[1::2], strict=False):
        if flag == "-e":
            key, _, val = value.partition("=")
            env[key] = val
        elif flag == "-p":
            env[f"-p {value}"] = "1"
    return env


class FakeVastAPI(LocalService):

    methods = ("GET", "POST", "PUT", "DELETE")

    def __init__(self, *, api_key: str = "vast-fake-key-0123456789", offers: list[dict] | None = None,
                 templates: dict[str, dict] | None = None, loading_after: float = 0.2, running_after: float = 0.6,
                 port_map: dict[int, int] | None = None, destroy_delay: float = 0.0, logs_after: float = 0.2):
        self.api_key = api_key
        self.offers = [dict(o) for o in (offers or DEFAULT_OFFERS)]
        self.templates = templates if templates is not None else {SWARMUI_HASH: SWARMUI_TEMPLATE}
        self.loading_after = loading_after
        self.running_after = running_after
        self.port_map = port_map or {}
        self.destroy_delay = destroy_delay
        self.logs_after = logs_after
        self.instances: dict[int, dict] = {}
        self.destroyed: list[int] = []
        self.requests: list[tuple[str, str, bool]] = []
        self.bodies: list[Any] = []
        self.lock = threading.Lock()
        self._faults: deque[tuple[int, str]] = deque()
        self._refusals: deque[str] = deque()
        self._drop_creates = 0
        self._logs: dict[str, tuple[float, str]] = {}
        self._next_id = 29829389

    def inject(self, status: int, count: int = 1, route: str = "") -> None:
        """The next `count` API requests (whose path contains `route`) answer `status` (429: vast's
        plain-text body, no Retry-After)."""
        with self.lock:
            self._faults.extend([(status, route)] * count)

    def inject_create_drop(self, count: int = 1) -> None:
        with self.lock:
            self._drop_creates += count

    def refuse_destroy(self, count: int = 1, msg: str = "Instance is being modified, please try again later") -> None:
        with self.lock:
            self._refusals.extend([msg] * count)

    def set_status(self, instance_id: int, status: str, msg: str = "") -> None:
        with self.lock:
            self.instances[instance_id]["forced_status"] = (status, msg)

    @property
    def url(self) -> str:
        """The server address, as VAST_URL takes it (the client appends /api/v0)."""
        return self.origin

    # -- behaviour -------------------------------------------------------------------------------------

    @staticmethod
    def _matches(row: dict, filters: dict, fields: set[str] | None = None) -> bool:
        for field, cond in filters.items():
            if not isinstance(cond, dict) or (fields is not None and field not in fields):
                continue  # order, type, limit, allocated_storage; fields vast does not know are ignored here
            for op, wanted in cond.items():
                if op not in OPS or not OPS[op](row.get(field), wanted):
                    return False
        return True

    def price(self, offer: dict, disk_gb: float) -> float:
        return round(offer["dph_base"] + offer["storage_cost"] * disk_gb / 720, 6)

    def search(self, query: dict) -> list[dict]:
        storage = float(query.get("allocated_storage") or 5.0)
        matches = []
        for offer in self.offers:
            row = {k: v for k, v in offer.items() if k != "dph_base"}
            row["dph_total"] = self.price(offer, storage)
            if self._matches(row, query, OFFER_FIELDS):
                matches.append(row)
        for field, direction in reversed(query.get("order") or []):
            matches.sort(key=lambda o: o.get(field) or 0, reverse=direction == "desc")
        return matches[: int(query.get("limit") or 64)]

    def create(self, offer_id: int, body: dict) -> tuple[int, dict]:
        offer = next((o for o in self.offers if o["id"] == offer_id), None)
        if offer is None:
            return 404, {"success": False, "error": "invalid_args", "ask_id": offer_id,
                         "msg": f"error 404/3603: no_such_ask Instance type by id {offer_id} is not available."}
        if offer["rented"]:
            return 410, {"success": False, "error": "no_such_ask", "ask_id": offer_id,
                         "msg": f"error 410/3907: no_such_ask Instance type {offer_id} is no longer available."}
        template: dict = {}
        if body.get("template_hash_id"):
            template = self.templates.get(body["template_hash_id"]) or {}
            if not template:
                return 400, {"success": False, "error": "invalid_args",
                             "msg": f"template {body['template_hash_id']} not found"}

        def pick(field: str, template_value: Any = None) -> Any:  # request overrides template (scalars)
            return body[field] if body.get(field) is not None else template_value

        image = pick("image", template.get("image") and f"{template['image']}:{template.get('tag') or 'latest'}")
        if not image:
            return 400, {"success": False, "error": "invalid_args", "msg": "image or template_hash_id required"}
        has_args = bool(body.get("args") or body.get("args_str"))
        runtype = pick("runtype", template_runtype(template) if template else ("args" if has_args else "ssh"))
        disk = float(pick("disk", template.get("recommended_disk_space") or 8.0))
        if disk < 8:
            return 400, {"success": False, "error": "invalid_args", "msg": "disk must be at least 8 GB"}
        env = {**docker_env(template.get("env", "")), **(body.get("env") or {})}
        onstart = pick("onstart", template.get("onstart"))
        entrypoint = "vast" if runtype != "args" else ("onstart" if onstart else "image")
        ports = sorted({int(m.group(1)) for k in env if (m := re.match(r"-p (\d+):\d+", k))})
        with self.lock:
            instance_id = self._next_id
            self._next_id += 1
            offer["rented"] = True
            self.instances[instance_id] = {
                "id": instance_id, "machine_id": offer["machine_id"], "gpu_name": offer["gpu_name"],
                "num_gpus": offer["num_gpus"], "dph_total": self.price(offer, disk), "label": body.get("label"),
                "image_uuid": image, "image_runtype": runtype, "image_args": body.get("args") or [],
                "template_hash_id": body.get("template_hash_id"), "onstart": onstart, "disk_space": disk,
                "extra_env": [[k, v] for k, v in env.items()], "entrypoint": entrypoint,
                "ports_wanted": ports, "created": time.monotonic(), "start_date": time.time(),
                "intended_status": "running", "offer_id": offer_id, "forced_status": None, "gone_at": None,
            }
        return 200, {"success": True, "new_contract": instance_id}

    def _status(self, inst: dict) -> tuple[str | None, str]:
        if inst["forced_status"]:
            return inst["forced_status"]
        age = time.monotonic() - inst["created"]
        status = None if age < self.loading_after else ("loading" if age < self.running_after else "running")
        return status, f"status: {status}"

    def _live(self, instance_id: int) -> dict | None:
        """The instance unless it is destroyed (and its delay has passed). Call with the lock held."""
        inst = self.instances.get(instance_id)
        if inst is not None and inst["gone_at"] is not None and time.monotonic() >= inst["gone_at"]:
            del self.instances[instance_id]
            for offer in self.offers:
                if offer["id"] == inst["offer_id"]:
                    offer["rented"] = False
            return None
        return inst

    def show(self, instance_id: int) -> dict | None:
        with self.lock:
            inst = self._live(instance_id)
            if inst is None:
                return None
            status, msg = self._status(inst)
            out = {k: v for k, v in inst.items()
                   if k not in ("created", "ports_wanted", "forced_status", "gone_at", "entrypoint", "offer_id")}
            out.update(actual_status=status, cur_state=inst["intended_status"], status_msg=msg,
                       public_ipaddr="127.0.0.1\n" if status else None, ssh_host="ssh5.vast.ai",
                       ssh_port=10000 + instance_id % 1000)
            out["ports"] = {f"{p}/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(self.port_map.get(p, 40000 + p))}]
                            for p in inst["ports_wanted"]} if status == "running" else {}
            return out

    def list_page(self, params: dict[str, str]) -> dict:
        filters = json.loads(params.get("select_filters") or "{}")
        limit = int(params.get("limit") or 25)
        limit = 5 if limit <= 0 else min(limit, 25)
        after = int(base64.b64decode(params["after_token"])) if params.get("after_token") else 0
        with self.lock:
            ids = sorted(i for i in list(self.instances) if self._live(i) is not None)
        rows = [row for i in ids if i > after and (row := self.show(i)) and self._matches(row, filters)]
        page = rows[:limit]
        more = len(rows) > limit
        return {"success": True, "instances_found": len(page), "total_instances": len(rows), "instances": page,
                "next_token": base64.b64encode(str(page[-1]["id"]).encode()).decode() if more else None}

    def manage(self, instance_id: int, body: dict) -> tuple[int, dict]:
        with self.lock:
            inst = self._live(instance_id)
            if inst is None:
                return 404, {"success": False, "error": "no_such_instance", "msg": f"Instance {instance_id} not found."}
            if "label" in body:
                if len(str(body["label"])) > 1024:
                    return 400, {"success": False, "error": "label_too_long",
                                 "msg": "Please limit label length to 1024 characters, ideally less than 128."}
                inst["label"] = body["label"]
                return 200, {"success": True, "msg": f"label for {instance_id} set to '{body['label']}'"}
            if body.get("state") in ("stopped", "running"):
                inst["intended_status"] = body["state"]
                inst["forced_status"] = ("stopped", "stopped by user") if body["state"] == "stopped" else None
                if body["state"] == "running":
                    inst["created"] = time.monotonic()
                return 200, {"success": True}
        return 400, {"success": False, "error": "invalid_args", "msg": "state or label required"}

    def destroy(self, instance_id: int) -> tuple[int, dict]:
        with self.lock:
            inst = self._live(instance_id)
            if inst is None or inst["gone_at"] is not None:
                if inst is None:
                    return 404, {"success": False, "error": "not_found", "msg": "Instance not found"}
                return 200, {"success": True}
            if self._refusals:
                return 200, {"success": False, "msg": self._refusals.popleft()}
            inst["gone_at"] = time.monotonic() + self.destroy_delay
            self.destroyed.append(instance_id)
        self.show(instance_id)  # drops it now when there is no delay
        return 200, {"success": True}

    def request_logs(self, instance_id: int, body: dict) -> tuple[int, dict]:
        with self.lock:
            inst = self._live(instance_id)
            if inst is None:
                return 404, {"error": "invalid_id", "msg": "Invalid instance id."}
            lines = [f"instance {instance_id}: pulling {inst['image_uuid']}", "container started",
                     f"entrypoint: {inst['entrypoint']}"] + ([f"onstart: {inst['onstart']}"] if inst["onstart"] else [])
        if body.get("filter"):
            lines = [line for line in lines if body["filter"] in line]
        if body.get("tail"):
            lines = lines[-int(body["tail"]):]
        token = uuid.uuid4().hex
        self._logs[token] = (time.monotonic() + self.logs_after, "\n".join(lines) + "\n")
        return 200, {"success": True, "result_url": f"{self.origin}/instance_logs/{token}.log",
                     "msg": "Logs will be uploaded to the URL shortly."}

    # -- HTTP ------------------------------------------------------------------------------------------

    def _dispatch(self, h: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(h.path)
        params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        segments = [s for s in parts.path.split("/") if s]
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        if segments[:1] == ["instance_logs"] and method == "GET":  # the S3 link: no auth
            ready_at, text = self._logs.get(segments[-1].removesuffix(".log"), (None, ""))
            if ready_at is None or time.monotonic() < ready_at:
                return reply(h, 404, "<Error><Code>NoSuchKey</Code></Error>", "application/xml")
            return reply(h, 200, text)
        authorized = h.headers.get("Authorization", "") == f"Bearer {self.api_key}"
        self.requests.append((method, parts.path, authorized))
        if not authorized:
            return reply_json(h, 401, {"success": False, "error": "auth_error", "msg": "Invalid user key"})
        with self.lock:
            fault = None
            if self._faults and self._faults[0][1] in parts.path:
                fault = self._faults.popleft()[0]
        if fault == 429:
            return reply(h, 429, TOO_FREQUENT)
        if fault is not None:
            return reply_json(h, fault, {"success": False, "error": "server_error", "msg": "internal error"})
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            return reply_json(h, 400, {"success": False, "error": "invalid_args", "msg": "body is not JSON"})
        self.bodies.append(body)
        version, route, rest = (segments[1:2] or [""])[0], (segments[2:3] or [""])[0], segments[3:]
        if segments[:1] != ["api"]:
            return reply_json(h, 404, {"success": False, "error": "not_found", "msg": parts.path})
        if version == "v1" and route == "instances" and method == "GET":
            return reply_json(h, 200, self.list_page(params))
        if version != "v0":
            return reply_json(h, 404, {"success": False, "error": "not_found", "msg": parts.path})
        if route == "bundles" and method == "POST":
            return reply_json(h, 200, {"offers": self.search(body)})
        if route == "template" and method == "GET":
            filters = json.loads(params.get("select_filters") or "{}")
            found = [t for t in self.templates.values() if self._matches(t, filters)]
            return reply_json(h, 200, {"success": True, "templates_found": len(found), "templates": found})
        if route == "asks" and method == "PUT" and rest and rest[0].isdigit():
            status, answer = self.create(int(rest[0]), body)
            with self.lock:
                drop, self._drop_creates = self._drop_creates > 0, max(0, self._drop_creates - 1)
            if drop:  # rented, but the answer never arrives
                h.close_connection = True
                h.connection.shutdown(2)
                return None
            return reply_json(h, status, answer)
        if route == "instances" and rest[:1] == ["request_logs"] and method == "PUT" and rest[1:2]:
            return reply_json(h, *self.request_logs(int(rest[1]), body))
        if route == "instances" and rest and rest[0].isdigit():
            instance_id = int(rest[0])
            if method == "GET":
                return reply_json(h, 200, {"instances": self.show(instance_id)})
            if method == "DELETE":
                return reply_json(h, *self.destroy(instance_id))
            if method == "PUT":
                return reply_json(h, *self.manage(instance_id, body))
        return reply_json(h, 404, {"success": False, "error": "not_found", "msg": f"{method} {parts.path}"})
