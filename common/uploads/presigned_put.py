"""A presigned PUT URL given by the caller (S3, R2, GCS signed URLs): one streamed PUT."""

from __future__ import annotations

from common.redaction import register_secret
from common.uploads.base import (
    USER_AGENT,
    Artifact,
    ProgressFile,
    byte_reporter,
    http_failure,
    raise_for_http,
    timeouts,
)


def upload(artifact: Artifact, upload_url: str, *, progress=None) -> dict:
    import requests

    register_secret(upload_url)
    headers = {"Content-Length": str(artifact.size), "Content-Type": artifact.content_type,
               "User-Agent": USER_AGENT}
    try:
        with ProgressFile(artifact.path, byte_reporter(progress, "presigned_put", artifact.size)) as body:
            resp = requests.put(upload_url, data=body, headers=headers, timeout=timeouts())
    except requests.RequestException as exc:
        raise http_failure("presigned_put", exc) from None
    raise_for_http("presigned PUT URL", resp.status_code, resp.text)
    return {
        # The object now lives where the caller pointed; its address without the signature
        # is only readable with the caller's own credentials or a presigned GET.
        "download_url": upload_url.split("?", 1)[0],
        "expires_in_days": None,
        "note": "uploaded to the presigned URL you gave; download it with your own credentials",
    }
