"""transfer.sh, self-hosted (the public instance is gone): `PUT {base}/{name}` with `Max-Days`."""

from __future__ import annotations

import os
from urllib.parse import quote

from common.uploads.base import (
    USER_AGENT,
    Artifact,
    ProgressFile,
    UploadError,
    byte_reporter,
    excerpt,
    raise_for_http,
    send,
)
from common.uploads.spec import TransferShSpec, same_url


def resolve(spec: TransferShSpec | None) -> TransferShSpec | None:
    """The spec with env `TRANSFER_SH_URL` as base when missing; None when no server is configured."""
    data = spec.model_dump() if spec else {}
    if not data.get("base_url"):
        data["base_url"] = os.environ.get("TRANSFER_SH_URL") or None
    if not data["base_url"]:
        return None
    return TransferShSpec.model_validate(data)


def job_named(spec: TransferShSpec) -> bool:
    """Whether the base URL is the job's own choice rather than the operator's `TRANSFER_SH_URL`."""
    return not same_url(spec.base_url, os.environ.get("TRANSFER_SH_URL"))


def upload(artifact: Artifact, spec: TransferShSpec, *, progress=None) -> dict:
    url = f"{str(spec.base_url).rstrip('/')}/{quote(artifact.name)}"
    headers = {"Max-Days": str(spec.max_days), "Content-Length": str(artifact.size), "User-Agent": USER_AGENT}
    with ProgressFile(artifact.path, byte_reporter(progress, "transfer_sh", artifact.size)) as body:
        resp = send("transfer_sh", "PUT", url, job_named=job_named(spec), data=body, headers=headers)
    raise_for_http("transfer.sh", resp)
    link = resp.text.strip().splitlines()[0] if resp.text.strip() else ""
    if not link.startswith(("http://", "https://")):
        raise UploadError(f"transfer.sh: answered without a link: {excerpt(resp.text)!r}")
    record = {"download_url": link, "expires_in_days": spec.max_days}
    if resp.headers.get("X-Url-Delete"):
        record["delete_url"] = resp.headers["X-Url-Delete"]
    return record
