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
    http_failure,
    raise_for_http,
    timeouts,
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
    import requests

    spec = spec or LitterboxSpec()
    if not fits(artifact.size):
        raise UploadError(f"litterbox: {artifact.name} is {artifact.size / 1e9:.2f} GB, over its 1 GB limit")
    try:
        with MultipartFile({"reqtype": "fileupload", "time": spec.expiry}, "fileToUpload", artifact.path,
                           artifact.content_type, byte_reporter(progress, "litterbox", artifact.size)) as body:
            resp = requests.post(api_url(), data=body, timeout=timeouts(),
                                 headers={"User-Agent": USER_AGENT, "Content-Type": body.content_type})
    except requests.RequestException as exc:
        raise http_failure("litterbox", exc) from None
    raise_for_http("litterbox", resp.status_code, resp.text)
    url = resp.text.strip()
    if not _URL.match(url):
        raise UploadError(f"litterbox: answered without a link: {' '.join(url.split())[:200]!r}")
    return {"download_url": url, "expires_in_days": round(_HOURS[spec.expiry] / 24, 2)}
