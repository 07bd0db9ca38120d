"""Hugging Face Hub: raw files (no zip) in one commit, direct `resolve/main/...?download=true` links.

With the operator's `HF_TOKEN` (the job gave no token of its own) a job writes only under the token
owner's namespace or one listed in `HF_ALLOWED_NAMESPACES`, and only to private repos unless
`HF_ALLOW_PUBLIC=1`: the token may reach the operator's organisations and their public repos.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

from common import retries
from common.uploads.base import TransientUploadError, UploadError
from common.uploads.spec import HuggingFaceSpec
from common.volumes import safe_job_id


def resolve(spec: HuggingFaceSpec | None) -> HuggingFaceSpec | None:
    """The spec with the token from env `HF_TOKEN` when missing; None when there is no token."""
    data = spec.model_dump() if spec else {}
    if not data.get("token"):
        data["token"] = env_token()
    if not data["token"]:
        return None
    return HuggingFaceSpec.model_validate(data)


def env_token() -> str | None:
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def env_token_in_use(spec: HuggingFaceSpec) -> bool:
    return spec.token is not None and spec.token == env_token()


def public_allowed() -> bool:
    return os.environ.get("HF_ALLOW_PUBLIC", "").lower() in ("1", "true", "yes")


def allowed_namespaces() -> set[str]:
    return {n.strip() for n in os.environ.get("HF_ALLOWED_NAMESPACES", "").split(",") if n.strip()}


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
        if status in (408, 429) or status >= 500:
            return TransientUploadError(message, retries.retry_after(exc.response.headers.get("Retry-After")))
        return UploadError(message)
    return TransientUploadError(f"huggingface: {what}: {type(exc).__name__}: {exc}")


def _api(spec: HuggingFaceSpec):
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint(), token=spec.token)


def _ensure_repo(api, spec: HuggingFaceSpec, job_id: str) -> str:
    """Create the repo when missing (private by default) and return its full `owner/name` id."""
    repo_id = spec.repo_id or f"outputs-{safe_job_id(job_id)}"[:96].rstrip(".-")
    operator_token = env_token_in_use(spec)
    try:
        owner = api.whoami()["name"] if "/" not in repo_id or operator_token else None
    except Exception as exc:
        raise _classify(exc, "asking whose token this is") from None
    if "/" not in repo_id:
        repo_id = f"{owner}/{repo_id}"
    if operator_token:
        namespace = repo_id.split("/", 1)[0]
        allowed = {owner, *allowed_namespaces()}
        if namespace not in allowed:
            raise UploadError(f"huggingface: the worker's HF_TOKEN writes only under {', '.join(sorted(allowed))} "
                              f"(its owner, or HF_ALLOWED_NAMESPACES), not {namespace!r}; give "
                              "output.huggingface.token to write elsewhere")
    try:
        api.create_repo(repo_id, repo_type=spec.repo_type, private=spec.private, exist_ok=True)
        # an existing repo keeps its visibility whatever `private` asked for
        private = api.repo_info(repo_id, repo_type=spec.repo_type).private if operator_token else True
    except Exception as exc:
        raise _classify(exc, f"creating repo {repo_id}") from None
    if operator_token and not private and not public_allowed():
        raise UploadError(f"huggingface: {repo_id} is public; the worker's HF_TOKEN writes only to private repos "
                          "(HF_ALLOW_PUBLIC=1 allows public ones); give output.huggingface.token to write there")
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
