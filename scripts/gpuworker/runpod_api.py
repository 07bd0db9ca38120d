"""Client of RunPod's serverless endpoint API (`https://api.runpod.ai/v2/{endpoint_id}/...`).

Requests are sent with plain `requests` rather than `runpod.Endpoint` because the SDK reads
its base URL once at import time and has no 429 backoff; this client takes the base URL per
call (flag or `RUNPOD_ENDPOINT_BASE_URL`) and retries 429/5xx.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomllib

from scripts.gpuworker.console import CliError, register_key
from scripts.gpuworker.http import JsonApi, OutageTolerance

DEFAULT_BASE_URL = "https://api.runpod.ai/v2"
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})
ACTIVE = frozenset({"IN_QUEUE", "IN_PROGRESS"})


def key_from_config(path: Path | None = None) -> str:
    """The key `runpodctl config --apiKey` or `runpod config` saved in `~/.runpod/config.toml`: runpodctl's
    top-level `apikey` (viper keys ignore case; runpod/runpodctl cmd/root.go:197-206,
    internal/configenv/configenv.go:15-33), else the SDK's `[default] api_key` (runpod-python
    runpod/cli/groups/config/functions.py `set_credentials`)."""
    path = path or Path.home() / ".runpod" / "config.toml"
    try:
        config = tomllib.loads(path.read_text())
    except (OSError, ValueError):
        return ""
    top = {k.lower(): v for k, v in config.items()}
    default = config.get("default") if isinstance(config.get("default"), dict) else {}
    key = top.get("apikey") if isinstance(top.get("apikey"), str) else default.get("api_key")
    return key.strip() if isinstance(key, str) else ""


def api_key_from_env() -> str:
    """`RUNPOD_API_KEY`, else the key runpodctl / the runpod SDK keep in `~/.runpod/config.toml`."""
    key = os.environ.get("RUNPOD_API_KEY", "").strip() or key_from_config()
    if not key:
        raise CliError("RUNPOD_API_KEY is not set: export your RunPod API key, or save it with `runpodctl config "
                       "--apiKey …` (~/.runpod/config.toml); it is never printed", 2)
    return register_key(key)


def base_url(flag: str | None) -> str:
    return (flag or os.environ.get("RUNPOD_ENDPOINT_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")


def job_payload(data: Any) -> dict:
    """A request body: `data` as is when it already has `input`, else wrapped (as `runpod.Endpoint` does)."""
    if isinstance(data, dict) and "input" in data:
        return data
    return {"input": data}


def clean_error(error: Any) -> str:
    """RunPod's `error` as one line. A raised exception arrives as a JSON-encoded string holding
    `error_type`, `error_message` and a traceback; only type and message are shown."""
    if error is None:
        return ""
    if isinstance(error, str):
        text = error.strip()
        if text.startswith("{"):
            try:
                parsed = json.loads(text)
            except ValueError:
                return text
            return clean_error(parsed)
        return text
    if isinstance(error, dict):
        message = error.get("error_message") or error.get("message") or error.get("error")
        kind = error.get("error_type")
        if message:
            kind = kind.split("'")[1] if kind and kind.startswith("<class '") else kind
            return f"{kind}: {message}" if kind else str(message)
        return json.dumps(error)
    return str(error)


def find_download_url(output: Any) -> str | None:
    """The download link of a result (trainer: `output.output.download_url`; others top level)."""
    if isinstance(output, dict):
        for key in ("download_url", "safetensors_url"):
            if isinstance(output.get(key), str):
                return output[key]
        for value in output.values():
            found = find_download_url(value) if isinstance(value, dict) else None
            if found:
                return found
    return None


def progress_of(status: dict) -> dict | None:
    """The latest `progress_update` payload of an IN_PROGRESS job (`{"stage","percent","message"}`)."""
    out = status.get("output")
    if status.get("status") == "IN_PROGRESS" and isinstance(out, dict):
        return out
    return None


class Endpoint:
    def __init__(self, endpoint_id: str, *, api_key: str, base: str | None = None, **api_kwargs: Any):
        if not endpoint_id or "/" in endpoint_id:
            raise CliError(f"endpoint: {endpoint_id!r} is not an endpoint id", 2)
        self.endpoint_id = endpoint_id
        self.api = JsonApi(f"{base_url(base)}/{endpoint_id}", auth_header={"Authorization": f"Bearer {api_key}"},
                           service=f"RunPod {endpoint_id}", **api_kwargs)

    def run(self, payload: dict) -> dict:
        """Submit a job; the body RunPod answered, which always carries the job's `id`."""
        job = self.api.request("POST", "run", json_body=payload, creates=True)
        if not job.get("id"):
            raise CliError(f"RunPod /run returned no job id: {job}")
        return job

    def runsync(self, payload: dict, *, wait_ms: int | None = None) -> dict:
        params = {"wait": wait_ms} if wait_ms else None
        timeout = (wait_ms / 1000 + 30) if wait_ms else 120
        return self.api.request("POST", "runsync", json_body=payload, params=params, timeout=timeout, creates=True)

    def status(self, job_id: str) -> dict:
        return self.api.request("GET", f"status/{job_id}")

    def stream(self, job_id: str) -> dict:
        return self.api.request("GET", f"stream/{job_id}")

    def cancel(self, job_id: str) -> dict:
        return self.api.request("POST", f"cancel/{job_id}")

    def health(self) -> dict:
        return self.api.request("GET", "health")

    def purge_queue(self) -> dict:
        return self.api.request("POST", "purge-queue")

    def follow(self, job_id: str, *, poll: float = 1.0, timeout: float | None = None, stream: bool = False,
               on_status: Callable[[dict], None] | None = None,
               on_item: Callable[[Any], None] | None = None) -> dict:
        """Poll until the job ends; returns the final `/status` body.

        `on_status` sees every status (progress updates ride on IN_PROGRESS `output`);
        with `stream`, `/stream` is polled too and each streamed item goes to `on_item`.
        """
        deadline = time.monotonic() + timeout if timeout else None
        outage = OutageTolerance()
        while True:
            if stream:
                chunk = outage.call(lambda: self.stream(job_id)) or {}
                for item in chunk.get("stream") or []:
                    if on_item is not None:
                        on_item(item.get("output") if isinstance(item, dict) and "output" in item else item)
            status = outage.call(lambda: self.status(job_id))
            if status is None:  # unreachable for now: poll again
                status = {"status": "UNKNOWN (unreachable)"}
            elif on_status is not None:
                on_status(status)
            if status.get("status") in TERMINAL:
                if stream:  # items yielded just before the end
                    for item in self.stream(job_id).get("stream") or []:
                        if on_item is not None:
                            on_item(item.get("output") if isinstance(item, dict) and "output" in item else item)
                return status
            if deadline is not None and time.monotonic() >= deadline:
                raise CliError(f"job {job_id} is still {status.get('status')} after {timeout:g} s "
                               f"(it keeps running; follow it with `gpuworker runpod stream`)", 3)
            time.sleep(poll)
