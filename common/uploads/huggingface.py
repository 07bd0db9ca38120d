"""Hugging Face Hub: raw files (no zip) in one commit, direct `resolve/main/...?download=true` links."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import quote

from common.uploads.base import TransientUploadError, UploadError
from common.uploads.spec import HuggingFaceSpec


def resolve(spec: HuggingFaceSpec | None) -> HuggingFaceSpec | None:
    """The spec with the token from env `HF_TOKEN` when missing; None when there is no token."""
    data = spec.model_dump() if spec else {}
    if not data.get("token"):
        data["token"] = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if not data["token"]:
        return None
    return HuggingFaceSpec.model_validate(data)


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _classify(exc: Exception, what: str) -> UploadError:
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    if isinstance(exc, HFValidationError):
        return UploadError(f"huggingface: {what}: {exc}")
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else 0
        message = f"huggingface: {what} answered HTTP {status}: {exc.server_message or ''}".rstrip(": ")
        if status in (401, 403):
            message += " (the token needs write access)"
        return TransientUploadError(message) if status in (408, 429) or status >= 500 else UploadError(message)
    return TransientUploadError(f"huggingface: {what}: {type(exc).__name__}: {exc}")


def _api(spec: HuggingFaceSpec):
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint(), token=spec.token)


def _ensure_repo(api, spec: HuggingFaceSpec, job_id: str) -> str:
    """Create the repo when missing (private by default) and return its full `owner/name` id."""
    repo_id = spec.repo_id or re.sub(r"[^A-Za-z0-9._-]+", "-", f"outputs-{job_id}")[:96].strip(".-")
    try:
        if "/" not in repo_id:
            repo_id = f"{api.whoami()['name']}/{repo_id}"
        api.create_repo(repo_id, repo_type=spec.repo_type, private=spec.private, exist_ok=True)
    except Exception as exc:
        raise _classify(exc, f"creating repo {repo_id}") from None
    return repo_id


def upload(files: list[Path], spec: HuggingFaceSpec, *, job_id: str, progress=None) -> dict:
    from huggingface_hub import CommitOperationAdd

    api = _api(spec)
    repo_id = _ensure_repo(api, spec, job_id)
    folder = (spec.path_in_repo or "").strip("/")
    paths = [f"{folder}/{f.name}" if folder else f.name for f in files]
    ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(f)) for p, f in zip(paths, files, strict=True)]
    if progress is not None:
        progress.update("upload", 0, f"huggingface: committing {len(files)} file(s) to {repo_id}", force=True)
    try:
        api.create_commit(repo_id, ops, commit_message=f"Upload outputs of job {job_id}", repo_type=spec.repo_type)
    except Exception as exc:
        raise _classify(exc, f"uploading to {repo_id}") from None
    prefix = "datasets/" if spec.repo_type == "dataset" else ""
    repo_url = f"{endpoint()}/{prefix}{repo_id}"
    urls = [f"{repo_url}/resolve/main/{quote(p)}?download=true" for p in paths]
    record = {"download_url": urls[0], "repo_url": repo_url, "repo_id": repo_id, "expires_in_days": None,
              "files": urls}
    safetensors = [u for u, p in zip(urls, paths, strict=True) if p.endswith(".safetensors")]
    if safetensors:
        record["safetensors_url"] = record["download_url"] = safetensors[0]
    if spec.private:
        record["note"] = "private repo: downloads need a Hugging Face token with read access"
    return record
