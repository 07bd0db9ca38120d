"""A local stand-in for the vast.ai serverless autoscaler, as the `vastai` PyWorker sees it.

Routes, as the vastai 1.9.1 package calls them (`vastai/serverless/server/lib/backend.py:393-409`
/pubkey/, `lib/metrics.py:281` /worker_status/, `lib/metrics.py:183` /delete_requests/,
`vastai/serverless/client/endpoint.py:182` /route/):
- `GET  /pubkey/`          PEM of this autoscaler's RSA public key (the worker verifies requests with it)
- `POST /worker_status/`   the worker's periodic report (recorded; 200)
- `POST /delete_requests/` finished requests (recorded; 200)
- `POST /route/`           a client asks for a worker: `{"endpoint", "api_key", "cost"}` ->
                           `{"url", "reqnum", "signature", "cost", "endpoint", "request_idx", "__request_id"}`
                           when a worker has reported itself loaded, else a status without `url`;
                           a wrong api_key -> 401.

Signatures are PKCS#1 v1.5 over SHA-256 of `json.dumps({"url": url}, indent=4, sort_keys=True)`,
base64-encoded, exactly what the worker checks (only `url` is signed; `lib/backend.py:791-815`).
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.threaded_http import LocalService


class VastAutoscaler(LocalService):
    def __init__(self, *, endpoint: str = "controlnet-test", api_key: str = "vast-test-key",
                 master_token: str = "test-master-token") -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.endpoint = endpoint
        self.api_key = api_key
        self.master_token = master_token
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.pubkey_pem = self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        self.statuses: list[dict] = []
        self.deleted: list[dict] = []
        self.pubkey_fetches = 0
        self._reqnum = itertools.count(1)
        self._cond = threading.Condition()

    # -- lifecycle -----------------------------------------------------------------------
    def _dispatch(self, handler, method: str) -> None:
        path = handler.path.rstrip("/")
        if method == "GET":
            if path == "/pubkey":
                with self._cond:
                    self.pubkey_fetches += 1
                return self._reply(handler, 200, self.pubkey_pem, "text/plain")
            return self._reply(handler, 404, {"error": "not found"})
        raw = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return self._reply(handler, 400, {"error": "invalid JSON"})
        if path == "/worker_status":
            with self._cond:
                self.statuses.append(body)
                self._cond.notify_all()
            return self._reply(handler, 200, {})
        if path == "/delete_requests":
            with self._cond:
                self.deleted.append(body)
                self._cond.notify_all()
            return self._reply(handler, 200, {})
        if path == "/route":
            status, out = self._route(body, handler.headers.get("Authorization"))
            return self._reply(handler, status, out)
        return self._reply(handler, 404, {"error": "not found"})

    @property
    def base_url(self) -> str:
        return self.origin

    def worker_env(self, worker_port: int, http_port: int, *, container_id: int = 1) -> dict[str, str]:
        """What vast.ai gives an instance of a serverless endpoint, pointed at this autoscaler."""
        return {
            "REPORT_ADDR": self.base_url,
            "CONTAINER_ID": str(container_id),
            "WORKER_PORT": str(worker_port),
            "WORKER_HTTP_PORT": str(http_port),
            "PUBLIC_IPADDR": "127.0.0.1",
            f"VAST_TCP_PORT_{worker_port}": str(worker_port),
            "USE_SSL": "false",
            "MASTER_TOKEN": self.master_token,
        }

    # -- signing and routing ---------------------------------------------------------------
    def sign(self, url: str) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        message = json.dumps({"url": url}, indent=4, sort_keys=True).encode()
        return base64.b64encode(self._key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()

    def loaded_worker(self) -> dict | None:
        """The latest report of a worker that finished loading without error."""
        with self._cond:
            for status in reversed(self.statuses):
                if status.get("loadtime", 0) > 0 and not status.get("error_msg"):
                    return status
        return None

    def _route(self, body: dict, authorization: str | None) -> tuple[int, dict]:
        key = body.get("api_key") or (authorization or "").removeprefix("Bearer ").strip()
        if key != self.api_key:
            return 401, {"error": "invalid api key"}
        if body.get("endpoint") != self.endpoint:
            return 404, {"error": f"no endpoint named {body.get('endpoint')!r}"}
        worker = self.loaded_worker()
        if worker is None:
            return 200, {"status": "no workers ready", "endpoint": self.endpoint}
        url = worker["url"]
        reqnum = next(self._reqnum)
        return 200, {"url": url, "reqnum": reqnum, "signature": self.sign(url), "cost": body.get("cost", 100),
                     "endpoint": self.endpoint, "request_idx": body.get("request_idx", reqnum),
                     "__request_id": uuid.uuid4().hex}

    def wait_for(self, predicate: Callable[[VastAutoscaler], Any], timeout: float = 60.0,
                 alive: Callable[[], bool] | None = None) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate(self)
                if value:
                    return value
                if alive is not None and not alive():
                    raise AssertionError("the worker process exited")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"condition not met in {timeout}s; last status: "
                                       f"{self.statuses[-1] if self.statuses else None}")
                self._cond.wait(min(left, 0.5))

    @staticmethod
    def _reply(h: BaseHTTPRequestHandler, status: int, payload: Any, ctype: str = "application/json") -> None:
        raw = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(raw)))
        h.end_headers()
        h.wfile.write(raw)
