"""A presigned PUT URL given by the caller (S3, R2, GCS signed URLs): one streamed PUT."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from common.redaction import register_secret
from common.uploads.base import (
    USER_AGENT,
    Artifact,
    ProgressFile,
    byte_reporter,
    raise_for_http,
    send,
)


def _content_type_is_signed(url: str) -> bool:
    """Whether the signature covers Content-Type, so the PUT must carry one.

    SigV4 (S3, R2, GCS v4) lists signed headers in the query; V2-style signatures
    (`Signature=` with `AWSAccessKeyId`/`GoogleAccessId`) always sign it, usually as empty,
    so an unsigned PUT must send none or the store answers SignatureDoesNotMatch.
    """
    query = {k.lower(): v for k, v in parse_qsl(urlsplit(url).query)}
    signed = query.get("x-amz-signedheaders") or query.get("x-goog-signedheaders") or ""
    return "content-type" in signed.lower().split(";")


def upload(artifact: Artifact, upload_url: str, *, progress=None) -> dict:
    register_secret(upload_url)
    headers = {"Content-Length": str(artifact.size), "User-Agent": USER_AGENT}
    if _content_type_is_signed(upload_url):
        headers["Content-Type"] = artifact.content_type
    with ProgressFile(artifact.path, byte_reporter(progress, "presigned_put", artifact.size)) as body:
        resp = send("presigned_put", "PUT", upload_url, job_named=True, data=body, headers=headers)
    raise_for_http("presigned PUT URL", resp)
    return {
        # The object now lives where the caller pointed; its address without the signature
        # is only readable with the caller's own credentials or a presigned GET.
        "download_url": upload_url.split("?", 1)[0],
        "expires_in_days": None,
        "note": "uploaded to the presigned URL you gave; download it with your own credentials",
    }
