"""litterbox.catbox.moe: temporary public hosting (1h to 72h), no account, at most 1 GB per file."""

from __future__ import annotations

import os
import re

from common.uploads.base import (
    USER_AGENT,
    Artifact,
    MultipartFile,
    UploadError,
    byte_reporter,
    excerpt,
    raise_for_http,
    send,
)
from common.uploads.spec import LitterboxSpec

DEFAULT_API_URL = "https://litterbox.catbox.moe/resources/internals/api.php"
MAX_BYTES = 1000 * 1000 * 1000  # "1 GB"
_HOURS = {"1h": 1, "12h": 12, "24h": 24, "72h": 72}
_URL = re.compile(r"^https?://\S+$")


def api_url() -> str:
    return os.environ.get("LITTERBOX_API_URL") or DEFAULT_API_URL


def enabled() -> bool:
    """`auto` may use the public litterbox unless the operator set `LITTERBOX_ENABLED=false`."""
    return os.environ.get("LITTERBOX_ENABLED", "true").lower() not in ("0", "false", "no")


def fits(size: int) -> bool:
    return size <= MAX_BYTES


def upload(artifact: Artifact, spec: LitterboxSpec | None, *, progress=None) -> dict:
    spec = spec or LitterboxSpec()
    if not fits(artifact.size):
        raise UploadError(f"litterbox: {artifact.name} is {artifact.size / 1e9:.2f} GB, over its 1 GB limit")
    with MultipartFile({"reqtype": "fileupload", "time": spec.expiry}, "fileToUpload", artifact.path,
                       artifact.content_type, byte_reporter(progress, "litterbox", artifact.size)) as body:
        # the address is the operator's (LITTERBOX_API_URL) or the public service's: trusted
        resp = send("litterbox", "POST", api_url(), job_named=False, data=body,
                    headers={"User-Agent": USER_AGENT, "Content-Type": body.content_type})
    raise_for_http("litterbox", resp)
    url = resp.text.strip()
    if not _URL.match(url):
        raise UploadError(f"litterbox: answered without a link: {excerpt(url)!r}")
    return {"download_url": url, "expires_in_days": round(_HOURS[spec.expiry] / 24, 2)}
