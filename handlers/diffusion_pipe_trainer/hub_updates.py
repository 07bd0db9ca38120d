"""Progress written to the output repo's `UPDATES/` folder on the Hugging Face Hub
(docs/diffusion-pipe-trainer.md, "Progress").

RunPod keeps a `/run` result for 30 minutes; the repo keeps `UPDATES/<job_id>.json` (this
job's latest state, and at the end its download link or error) and `UPDATES/latest.json`
(the same, for the newest job) for good. Commits go out from a background thread, at most
one per `HF_UPDATES_INTERVAL_S` (default 120 s) plus one per stage change; progress never
waits for the Hub and a failing Hub never fails the job.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from common.jobs import JobError
from common.redaction import redact
from handlers.diffusion_pipe_trainer import settings

log = logging.getLogger("trainer.hub_updates")


def hub_api(token: str):
    from huggingface_hub import HfApi

    return HfApi(endpoint=settings.current().hf_endpoint, token=token)


def resolve_repo_id(token: str, repo_id: str | None, job_id: str, model_type: str) -> str:
    """The given repo id, or `<token owner>/lora-<model_type>-<job_id>`."""
    if repo_id:
        return repo_id
    owner = hub_api(token).whoami()["name"]
    return f"{owner}/lora-{model_type}-{job_id}".replace("_", "-")[:96]


class HubUpdates:
    def __init__(self, token: str, repo_id: str, job_id: str, *, private: bool = True,
                 interval_s: float | None = None) -> None:
        self.api = hub_api(token)
        self.repo_id = repo_id
        self.job_id = job_id
        self.private = private
        self.interval_s = settings.current().hf_updates_interval_s if interval_s is None else interval_s
        self._pending: dict | None = None
        self._last_stage: str | None = None
        self._last_sent = 0.0
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.commits = 0

    def start(self) -> None:
        self.api.create_repo(self.repo_id, private=self.private, exist_ok=True)
        self._thread = threading.Thread(target=self._loop, name="hub-updates", daemon=True)
        self._thread.start()

    def __call__(self, data: dict) -> None:
        """A `Progress` sink: queue the newest state; the thread decides when to commit."""
        with self._cond:
            self._pending = dict(data)
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._due():
                    self._cond.wait(timeout=self._wait_time())
                if self._stop:
                    return
                data, self._pending = self._pending, None
            if data is not None:
                self._last_stage, self._last_sent = data.get("stage"), time.monotonic()
                self._commit({"status": "running", **data}, f"job {self.job_id}: {data.get('stage')}")

    def _due(self) -> bool:
        if self._pending is None:
            return False
        return self._pending.get("stage") != self._last_stage or time.monotonic() - self._last_sent >= self.interval_s

    def _wait_time(self) -> float | None:
        if self._pending is None:
            return None
        return max(0.05, self.interval_s - (time.monotonic() - self._last_sent))

    def _commit(self, state: dict[str, Any], message: str) -> None:
        from huggingface_hub import CommitOperationAdd

        body = {"job_id": self.job_id, "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **state}
        data = json.dumps(redact(body, keep={"download_url", "safetensors_url", "repo_url"}), indent=2).encode()
        ops = [CommitOperationAdd(f"UPDATES/{self.job_id}.json", data), CommitOperationAdd("UPDATES/latest.json", data)]
        try:
            self.api.create_commit(self.repo_id, operations=ops, commit_message=message)
            self.commits += 1
        except Exception as exc:
            log.warning("could not write UPDATES/ to %s: %s", self.repo_id, exc)

    def finish(self, state: dict[str, Any]) -> None:
        """Stop the thread and write the final state (success with links, or the error) synchronously."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=60)
        self._commit(state, f"job {self.job_id}: {state.get('status')}")


def start_for(req, job_id: str) -> HubUpdates | None:
    """UPDATES/ progress when the output goes to the Hub (method huggingface, or auto with a token)."""
    out = req.output
    if out is None or req.dry_run or out.method not in ("huggingface", "auto"):
        return None
    token = (out.huggingface.token if out.huggingface else None) or settings.current().secret("hf_token")
    if not token:
        return None
    from huggingface_hub.errors import HfHubHTTPError

    hf = out.huggingface
    try:
        repo_id = resolve_repo_id(token, hf.repo_id if hf else None, job_id, req.model_type)
        hub = HubUpdates(token, repo_id, job_id, private=hf.private if hf else True)
        hub.start()
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if out.method == "huggingface" and status in (401, 403):
            # found out now rather than after hours of training
            raise JobError("invalid_input", f"output.huggingface.token: the Hub refused it ({status}); "
                                            "it needs write access") from None
        log.warning("UPDATES/ disabled: %s", exc)
        return None
    except Exception as exc:  # progress on the Hub is a convenience; the upload reports real failures
        log.warning("UPDATES/ disabled: %s", exc)
        return None
    if hf is None:
        from common.uploads.spec import HuggingFaceSpec

        out.huggingface = HuggingFaceSpec(token=token, repo_id=repo_id)
    else:
        hf.repo_id = repo_id  # the upload goes to the same repo as the updates
    return hub
