"""Model files a manifest names, and the one way they are fetched onto a volume.

A `ModelFile` is a source (`https://`, `http://`, `hf://owner/name/path[@rev]`, `s3://bucket/key`,
`gs://bucket/key`), a path relative to the destination folder, and optionally the sha256 and
size it must have. controlnet-pyworker's manifest (its components' files), the flat manifests of
`gpuworker models fetch` and the swarm worker's `SWARM_MODEL_MANIFEST` entries all come down to it
(`common.model_manifest` parses the flat ones).

`fetch_file` keeps a file already present unless its size differs from the manifest's (or, with
`verify_existing`, its sha256 does), and downloads it otherwise through `common.downloads`
(resumed, retried, checked). A file without a pinned sha256 is hashed after the download and its
hash logged, so it can be pinned.

`gs://bucket/key` is read over Google Cloud Storage's HTTPS endpoint (`GCS_PUBLIC_URL`, default
https://storage.googleapis.com, see https://cloud.google.com/storage/docs/request-endpoints),
with `Authorization: Bearer $GCS_OAUTH_TOKEN` when that is set (a private bucket; the token is
masked in every log and result) and anonymously otherwise (a public object). The worker and
the CLI used to differ here (public only vs token); both now send the token when the operator
gives one, so a private bucket works everywhere and a public one needs nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.hashing import file_sha256

log = logging.getLogger("model_files")

SOURCE_SCHEMES = ("https", "http", "hf", "s3", "gs")
GCS_ENDPOINT = "https://storage.googleapis.com"

Progress = Callable[[int, int | None], None]   # (bytes so far, total or None)


@dataclass(frozen=True)
class ModelFile:
    source: str
    path: str                 # relative to the destination folder
    sha256: str | None = None
    size: int | None = None

    def target(self, dest: Path) -> Path:
        return dest / self.path


def gcs_token() -> str | None:
    return os.environ.get("GCS_OAUTH_TOKEN") or os.environ.get("GOOGLE_OAUTH_ACCESS_TOKEN") or None


def request_for(source: str) -> tuple[str, dict[str, str]]:
    """The URL `common.downloads.download` fetches for `source`, and the headers to send."""
    if not source.startswith("gs://"):
        return source, {}
    base = (os.environ.get("GCS_PUBLIC_URL") or GCS_ENDPOINT).rstrip("/")
    token = gcs_token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return f"{base}/{source[len('gs://'):]}", headers


def why_replace(item: ModelFile, target: Path, *, verify_existing: bool,
                on_hashed: Callable[[int], None] | None = None) -> str | None:
    """None when the file at `target` is the right one; else why it is fetched again."""
    size = target.stat().st_size
    if item.size is not None and size != item.size:
        return f"size {size} != {item.size}"
    if item.sha256 and verify_existing and file_sha256(target, on_hashed) != item.sha256.lower():
        return "sha256 differs"
    return None


def fetch_file(item: ModelFile, dest: Path, *, verify_existing: bool, max_bytes: int,
               allow_private: bool = False, progress: Progress | None = None,
               on_hashed: Callable[[int], None] | None = None) -> dict:
    """Bring `item` to `dest / item.path`: a record `{path, url, status: present|fetched, bytes,
    sha256?, replaced?}`; a failed download raises `JobError` (nothing is left at the target).

    `max_bytes` caps a file whose manifest gives no size; `on_hashed(n)` follows the re-hash of a
    present file (progress bars)."""
    from common.downloads import download, shown_url
    from common.jobs import JobError

    target = item.target(dest)
    url, headers = request_for(item.source)
    record: dict = {"path": item.path, "url": shown_url(url) if url.startswith("http") else item.source}
    if target.is_file():
        why = why_replace(item, target, verify_existing=verify_existing, on_hashed=on_hashed)
        if why is None:
            return {**record, "status": "present", "bytes": target.stat().st_size}
        log.warning("%s: %s, fetching it again", target, why)
        record["replaced"] = why
        target.unlink()
    log.info("fetching %s -> %s", record["url"], target)
    download(url, target, max_bytes=item.size or max_bytes, sha256=item.sha256, headers=headers or None,
             progress=progress, allow_private=allow_private)
    size = target.stat().st_size
    if item.size is not None and size != item.size:
        target.unlink()
        raise JobError("download_failed", f"{item.path}: got {size} bytes, the manifest says {item.size}")
    digest = item.sha256
    if digest is None:
        digest = file_sha256(target)
        log.warning("%s has no pinned sha256; the downloaded file's sha256 is %s", item.path, digest)
    return {**record, "status": "fetched", "bytes": size, "sha256": digest}
