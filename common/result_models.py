"""Pydantic models of what the workers return, shared by the three images: the error result and
the upload record. They document the response contract (docs/schemas/, `python -m scripts.gen_docs`),
and the code checks what it builds against them (`checked`: the upload record, the trainer's results),
so the documentation cannot drift from the code without every test that builds one failing."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.jobs import validation_details

# queue_full / unauthorized: the controlnet model server's 429 / 401 (MODEL_SERVER_TOKEN) only.
ErrorCode = Literal["invalid_input", "download_failed", "unsafe_archive", "engine_failed", "upload_failed",
                    "timeout", "cancelled", "internal", "queue_full", "unauthorized"]


class Strict(BaseModel):
    """A documented result: a key the code adds without documenting it fails the tests."""

    model_config = ConfigDict(extra="forbid")


class ErrorResult(Strict):
    error: str = Field(..., description="`<error_code>: <human message>`; the only field RunPod passes on to clients")
    error_code: ErrorCode = Field(..., description="what went wrong, also the prefix of `error`")
    details: list[str] = Field(default_factory=list,
                               description="one line per problem, e.g. `field: reason` for invalid input")
    refresh_worker: bool | None = Field(None, description="set when the worker asks RunPod to replace it after "
                                                          "this job (an unusable GPU or a crashed engine)")
    timings: dict[str, float] | None = Field(None, description="seconds per stage, when the job got that far")
    worker_version: str | None = Field(None, description="version of the worker image")
    retry_after: int | None = Field(None, description="queue_full (HTTP 429): seconds to wait, also in Retry-After")


class UploadAttempt(Strict):
    method: str = Field(..., description="upload method tried")
    ok: bool = Field(..., description="whether this method delivered the artifact")
    error: str | None = Field(None, description="why it failed (secrets masked)")


class UploadRecord(Strict):
    download_url: str = Field(..., description="where to download the artifact")
    download_method: str = Field(..., description="the method that delivered it: huggingface, s3, presigned_put, "
                                                  "litterbox or transfer_sh")
    expires_in_days: float | None = Field(..., description="how long the link lives; null when it does not expire "
                                                           "(or, for presigned_put, is not a download link)")
    size_bytes: int = Field(..., description="size of the file behind download_url (the zip when one was made)")
    sha256: str = Field(..., description="sha256 of the file behind download_url")
    archive_size_mb: float | None = Field(None, description="size of the zip in MiB, when the outputs were zipped")
    repo_url: str | None = Field(None, description="huggingface: the repository")
    safetensors_url: str | None = Field(None, description="huggingface: the first .safetensors file's download link")
    files: list[str] | None = Field(None, description="huggingface: download links of every committed file")
    delete_url: str | None = Field(None, description="transfer_sh: URL that deletes the upload")
    s3_uri: str | None = Field(None, description="s3: s3://bucket/key of the object")
    note: str | None = Field(None, description="what the link needs explaining (a private repo, a PUT URL)")
    network_volume_path: str | None = Field(None, description="where the artifact is kept on the network volume")
    attempts: list[UploadAttempt] = Field(..., description="every method tried, in order")


def checked(model: type[BaseModel], result: dict[str, Any]) -> dict[str, Any]:
    """`result` itself, once `model` accepts it; a RuntimeError (an `internal` error: a bug, not bad input)
    naming the fields otherwise."""
    try:
        model.model_validate(result)
    except ValidationError as exc:
        raise RuntimeError(f"the result does not match {model.__name__}: "
                           + "; ".join(validation_details(exc))) from None
    return result
