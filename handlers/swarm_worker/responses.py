"""The swarm worker's job outputs for the lease protocol and `generate` (docs/swarm-worker.md).
The legacy actions' replies are the fields the v2.0 extension reads, listed in that page."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from common.result_models import Strict, UploadRecord


class LeaseGranted(Strict):
    success: Literal[True] = Field(..., description="the lease is held")
    public_url: str = Field(..., description="SwarmUI's base URL through the gateway")
    token: str = Field(..., description="this lease's gateway token (Authorization: Bearer, or /t/<token>)")
    worker_id: str = Field(..., description="the worker (RunPod pod id)")
    lease: int = Field(..., description="lease number on this worker")
    version: str = Field(..., description="version of the worker image")
    protocol: Literal[2] = Field(..., description="lease protocol generation")
    idle_seconds: float = Field(..., description="released after this long without generations (clamped)")
    startup_grace_seconds: float = Field(..., description="released when nobody used it within this (clamped)")
    max_lease_seconds: float = Field(..., description="longest lease (clamped); a running generation is not cut")


class LeaseReleased(Strict):
    """The lease's final output; also its only output when SwarmUI could not start (reason swarmui_failed)."""

    released: Literal[True] = Field(..., description="the lease ended; its token is revoked")
    reason: str = Field(..., description="idle, startup_grace_expired, max_lifetime, swarmui_exited, cancelled, "
                                         "swarmui_failed, ...")
    lease: int | None = Field(None, description="lease number on this worker")
    held_seconds: float | None = Field(None, description="how long the lease was held")
    worker_id: str | None = Field(None, description="the worker (RunPod pod id)")
    success: Literal[False] | None = Field(None, description="false when SwarmUI never started (the only output)")
    error: str | None = Field(None, description="swarmui_failed: why SwarmUI did not start")
    log_tail: list[str] | None = Field(None, description="swarmui_failed: SwarmUI's last log lines")
    timings: dict[str, float] | None = Field(None, description="seconds per stage")
    worker_version: str | None = Field(None, description="version of the worker image")


class GeneratedOutput(Strict):
    filename: str = Field(..., description="file name SwarmUI gave the output")
    mime: str = Field(..., description="MIME type, e.g. image/png or video/mp4")
    kind: str = Field(..., description="image or video")
    size_bytes: int = Field(..., description="file size")
    sha256: str = Field(..., description="sha256 of the file")
    base64: str | None = Field(None, description="the file, when delivered inline")
    upload: UploadRecord | None = Field(None, description="the upload record, when uploaded")
    metadata: dict[str, Any] | str | None = Field(
        None, description="SwarmUI's metadata of the output (usually an object: seed, model, parameters used)")


class GenerateResult(Strict):
    success: Literal[True] = Field(..., description="the generation finished (a failure is an error result)")
    outputs: list[GeneratedOutput] = Field(..., description="one entry per image or video")
    delivery: Literal["inline", "upload"] = Field(..., description="inline base64, or uploaded per `output`")
    params: dict[str, Any] = Field(..., description="the GenerateText2Image parameters sent (without initimage)")
    progress_events: int = Field(..., description="progress events SwarmUI sent")
    timings: dict[str, float] = Field(..., description="seconds per stage")
    worker_version: str = Field(..., description="version of the worker image")


class ActionFailure(Strict):
    """A failed action other than `generate` (whose failures are the common error result): an unknown
    action, SwarmUI unavailable."""

    success: Literal[False] = Field(..., description="the action failed")
    error: str = Field(..., description="what went wrong")
    error_id: str | None = Field(None, description="unknown_action, ...")
    error_code: str | None = Field(None, description="the error contract's code, when there is one")
    details: list[str] | None = Field(None, description="one line per problem (SwarmUI's last log lines)")
    available_actions: list[str] | None = Field(None, description="unknown_action: the actions there are")
    worker_id: str | None = Field(None, description="the worker that answered")
