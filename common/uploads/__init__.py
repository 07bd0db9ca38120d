"""Deliver job outputs: `upload(files, spec, job_id=..., volume_dir=...)` (docs/uploads.md).

One result shape for every method. `auto` tries each configured method in order
(huggingface -> s3 -> litterbox -> transfer_sh); transient failures are retried, then the
next method is tried. The artifact is never lost: with a `volume_dir` it is kept there
first, and an `upload_failed` error says where it is.

`check(spec)` validates a spec against the environment without sending anything (for a
handler's input validation).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from common.jobs import JobError, Progress, invalid_input
from common.redaction import redact_text, register_secret
from common.result_models import UploadRecord, checked
from common.uploads import huggingface, litterbox, presigned_put, s3, transfer_sh
from common.uploads.base import Artifact, UploadError, with_retries
from common.uploads.spec import UploadSpec
from common.volumes import safe_job_id

__all__ = ["AUTO_ORDER", "UploadError", "check", "parse_spec", "upload"]

log = logging.getLogger("uploads")

AUTO_ORDER = ("huggingface", "s3", "litterbox", "transfer_sh")


def parse_spec(spec: UploadSpec | dict | None) -> UploadSpec:
    if isinstance(spec, UploadSpec):
        return spec
    try:
        return UploadSpec.model_validate(spec or {})
    except ValidationError as exc:
        err = invalid_input(exc)
        err.details = [f"output.{d}" for d in err.details]
        err.message = "; ".join(err.details)
        raise err from None


def _register_spec_secrets(spec: UploadSpec) -> None:
    if spec.huggingface:
        register_secret(spec.huggingface.token)
    if spec.s3:
        register_secret(spec.s3.access_key, spec.s3.secret_key)
    if spec.upload_url:
        register_secret(str(spec.upload_url))


class _Delivery:
    """The files of one job and, made at most once, the single artifact non-Hub methods send."""

    def __init__(self, files: list[Path], job_id: str, kept_dir: Path | None, zip_name: str | None):
        self.files = files
        self.job_id = job_id
        self.kept_dir = kept_dir
        self.zip_name = zip_name or f"{job_id}.zip"
        self._artifact: Artifact | None = None
        self._scratch: Path | None = None  # where the zip goes when there is no volume to keep it
        self.zipped = False

    def artifact(self) -> Artifact:
        if self._artifact is None:
            if len(self.files) == 1:
                self._artifact = Artifact(self.files[0])
            else:
                from common.archives import make_zip

                if self.kept_dir is None:
                    self._scratch = Path(tempfile.mkdtemp(prefix=f"upload-{self.job_id}-"))
                where = self.kept_dir or self._scratch
                self._artifact = Artifact(make_zip(self.files, where / self.zip_name))
                self.zipped = True
        return self._artifact

    def cleanup(self) -> None:
        """Remove a zip made outside the volume (the files it holds are untouched)."""
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    def size(self) -> int:
        return sum(f.stat().st_size for f in self.files)


def _keep_on_volume(files: list[Path], volume_dir: Path | None, job_id: str) -> tuple[list[Path], Path | None]:
    """Files under `volume_dir` stay where they are; others are copied to `volume_dir/<job_id>/`."""
    if volume_dir is None:
        return files, None
    volume_dir = Path(volume_dir).resolve()
    if all(volume_dir in f.resolve().parents for f in files):
        parents = {f.resolve().parent for f in files}
        return files, parents.pop() if len(parents) == 1 else volume_dir
    target = volume_dir / job_id
    target.mkdir(parents=True, exist_ok=True)
    kept = []
    for f in files:
        dest = target / f.name
        if f.resolve() != dest.resolve():
            shutil.copy2(f, dest)
        kept.append(dest)
    return kept, target


def _plan(spec: UploadSpec, total_size: int) -> list[tuple[str, Any]]:
    """The (method, resolved settings) pairs to try, in order."""
    resolved = {
        "huggingface": huggingface.resolve(spec.huggingface),
        "s3": s3.resolve(spec.s3),
        "transfer_sh": transfer_sh.resolve(spec.transfer_sh),
    }
    if spec.method == "presigned_put":
        _check_destination("presigned_put", str(spec.upload_url))
        return [("presigned_put", str(spec.upload_url))]
    if spec.method == "litterbox":
        return [("litterbox", spec.litterbox)]
    if spec.method != "auto":
        settings = resolved[spec.method]
        if settings is None:
            need = {"huggingface": "output.huggingface.token (or env HF_TOKEN)",
                    "s3": "output.s3.bucket (or env S3_BUCKET)",
                    "transfer_sh": "output.transfer_sh.base_url (or env TRANSFER_SH_URL)"}[spec.method]
            raise JobError("invalid_input", f"output.method: '{spec.method}' needs {need}")
        _check_destination(spec.method, settings)
        if spec.method == "s3" and not (settings.access_key and settings.secret_key):
            raise JobError("invalid_input", "output.method: 's3' needs output.s3.access_key and output.s3.secret_key "
                                            "(or env AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
        return [(spec.method, settings)]
    plan = []
    for method in AUTO_ORDER:
        if method == "litterbox":
            if litterbox.enabled() and litterbox.fits(total_size):
                plan.append(("litterbox", spec.litterbox))
        elif resolved[method] is not None:
            plan.append((method, resolved[method]))
    for method, settings in plan:
        _check_destination(method, settings)
    return plan


def _refused(field: str, url: str) -> None:
    from common.downloads import destination_refusal

    reason = destination_refusal(url)
    if reason:
        raise JobError("invalid_input", f"{field}: refused: {reason}", [f"{field}: refused: {reason}"])


def _check_destination(method: str, settings: Any) -> None:
    """What the job named gets the SSRF guard, and the operator's credentials stay with the operator's
    destinations: refused here, before anything is sent (docs/uploads.md, "Trust")."""
    if method == "presigned_put":
        _refused("output.upload_url", settings)
    elif method == "transfer_sh" and transfer_sh.job_named(settings):
        _refused("output.transfer_sh.base_url", str(settings.base_url))
    elif method == "s3" and s3.job_endpoint(settings):
        if not (settings.access_key and settings.secret_key):
            raise JobError("invalid_input", "output.s3.endpoint_url: an endpoint of your own needs your own "
                                            "output.s3.access_key and output.s3.secret_key (the worker's keys go "
                                            "only to its own endpoint)")
        _refused("output.s3.endpoint_url", s3.job_endpoint(settings))
    elif method == "huggingface" and huggingface.env_token_in_use(settings):
        if not settings.private and not huggingface.public_allowed():
            raise JobError("invalid_input", "output.huggingface.private: the worker's HF_TOKEN writes only to "
                                            "private repos (give output.huggingface.token of your own, or the "
                                            "operator sets HF_ALLOW_PUBLIC=1)")


def check(spec: UploadSpec | dict | None) -> UploadSpec:
    """Validate `spec` with the worker's environment, as `upload()` will, without sending anything.

    Handlers call it with the rest of the input, so `method: "s3"` without a bucket or keys
    is an `invalid_input` before hours of work rather than after.
    """
    spec = parse_spec(spec)
    _register_spec_secrets(spec)
    _plan(spec, 0)
    return spec


def _send(method: str, settings: Any, delivery: _Delivery, job_id: str, progress: Progress | None) -> dict:
    if method == "huggingface":
        return huggingface.upload(delivery.files, settings, job_id=job_id, progress=progress)
    artifact = delivery.artifact()
    if method == "s3":
        return s3.upload(artifact, settings, job_id=job_id, progress=progress)
    if method == "presigned_put":
        return presigned_put.upload(artifact, settings, progress=progress)
    if method == "litterbox":
        return litterbox.upload(artifact, settings, progress=progress)
    return transfer_sh.upload(artifact, settings, progress=progress)


def upload(files: list[Path], spec: UploadSpec | dict | None, *, job_id: str, volume_dir: Path | None = None,
           progress: Progress | None = None, zip_name: str | None = None) -> dict:
    """Deliver `files` as `spec` asks and return the upload record; `JobError("upload_failed")` if nothing worked.

    `job_id` names the folder kept on the volume, the zip and the generated Hub repo (`safe_job_id`)."""
    job_id = safe_job_id(job_id)
    spec = parse_spec(spec)
    _register_spec_secrets(spec)
    files = [Path(f) for f in files]
    missing = [str(f) for f in files if not f.is_file()]
    if not files or missing:
        raise JobError("internal", f"nothing to upload: missing {missing or 'files'}")
    files, kept_dir = _keep_on_volume(files, volume_dir, job_id)
    delivery = _Delivery(files, job_id, kept_dir, zip_name)
    plan = _plan(spec, delivery.size())

    attempts: list[dict] = []
    try:
        for method, settings in plan:
            if progress is not None:
                progress.update("upload", 0, f"uploading with {method}", force=True, method=method)
            try:
                record = with_retries(method, lambda m=method, s=settings: _send(m, s, delivery, job_id, progress))
            except UploadError as exc:
                message = redact_text(str(exc))
                log.warning("upload with %s failed: %s", method, message)
                attempts.append({"method": method, "ok": False, "error": message})
                continue
            attempts.append({"method": method, "ok": True})
            return _record(record, method, delivery, kept_dir, attempts)
    finally:
        delivery.cleanup()

    where = f"; the output is kept at {kept_dir}" if kept_dir else ""
    details = [f"{a['method']}: {a['error']}" for a in attempts]
    if kept_dir:
        details.append(f"kept on the volume at {kept_dir}")
    else:
        folders = sorted({str(f.parent) for f in files})
        details.append(f"no network volume given; the outputs are still at {', '.join(folders)}")
    if not plan:
        raise JobError("upload_failed", f"no upload method is configured (give output.method and its settings){where}",
                       details)
    raise JobError("upload_failed", f"every upload method failed ({', '.join(a['method'] for a in attempts)}){where}",
                   details)


def _record(sent: dict, method: str, delivery: _Delivery, kept_dir: Path | None, attempts: list[dict]) -> dict:
    if method == "huggingface":
        primary = Artifact(_primary(delivery.files))
    else:
        primary = delivery.artifact()
    record = {
        "download_url": sent["download_url"],
        "download_method": method,
        "expires_in_days": sent.get("expires_in_days"),
        "size_bytes": primary.size,
        "sha256": primary.sha256,
    }
    if delivery.zipped and method != "huggingface":
        record["archive_size_mb"] = round(primary.size / 2**20, 2)
    for key in ("repo_url", "safetensors_url", "files", "delete_url", "s3_uri", "note"):
        if key in sent:
            record[key] = sent[key]
    if kept_dir is not None:
        record["network_volume_path"] = str(kept_dir)
    record["attempts"] = attempts
    return checked(UploadRecord, record)


def _primary(files: list[Path]) -> Path:
    return next((f for f in files if f.suffix == ".safetensors"), files[0])
