"""S3 and S3-compatible storage (AWS, Cloudflare R2, MinIO, SeaweedFS) with a presigned download link.

Trust: the operator's keys (env `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`) are used only with the
operator's endpoint (env `S3_ENDPOINT_URL`, or AWS itself when none is set). An endpoint the job
names needs the job's own keys and gets the SSRF guard of downloads.
"""

from __future__ import annotations

import os

from common.uploads.base import Artifact, TransientUploadError, UploadError, byte_reporter, env_float
from common.uploads.spec import S3Spec, same_url

# Tuned with scripts/bench_uploads.py: 64 MiB parts x 4 threads instead of boto3's 8 MiB x 10
# (8x fewer requests, less thread contention on small machines). Checksums are computed only
# where an operation requires them: S3-compatible stores differ in their support for the
# default CRC32 trailers, and the result carries our own sha256 of the artifact. The body is
# not SHA256-signed either (boto3 already skips that over https), which saves another pass over
# every part; together they cut boto3's CPU time about threefold (0.5 s -> 0.15 s per 256 MiB here).
# Env S3_PART_SIZE_MB / S3_UPLOAD_CONCURRENCY override them (e.g. more threads for a long WAN path).
PART_SIZE_MB = 64
CONCURRENCY = 4

_TRANSIENT_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "RequestTimeTooSkewed",
                    "500", "502", "503", "504", "429", "Throttling", "ThrottlingException"}


def env_endpoint() -> str | None:
    env = os.environ
    return env.get("S3_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL_S3") or env.get("BUCKET_ENDPOINT_URL") or None


def job_endpoint(spec: S3Spec | None) -> str | None:
    """The endpoint the job named when it is not the operator's, else None."""
    if spec is None or spec.endpoint_url is None:
        return None
    if same_url(spec.endpoint_url, env_endpoint()):
        return None
    return str(spec.endpoint_url)


def resolve(spec: S3Spec | None) -> S3Spec | None:
    """The spec with environment fallbacks filled in; None when no bucket is configured.

    The env keys are filled in only when the job gave no key of its own and no endpoint of its own:
    keys go as a pair, and the operator's go only to the operator's endpoint."""
    env = os.environ
    data = spec.model_dump() if spec else {}
    env_keys = not (data.get("access_key") or data.get("secret_key")) and job_endpoint(spec) is None
    fill = {
        "endpoint_url": env_endpoint(),
        "bucket": env.get("S3_BUCKET"),
        "region": env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION"),
        "access_key": env.get("AWS_ACCESS_KEY_ID") or env.get("BUCKET_ACCESS_KEY_ID"),
        "secret_key": env.get("AWS_SECRET_ACCESS_KEY") or env.get("BUCKET_SECRET_ACCESS_KEY"),
        "public_endpoint_url": env.get("S3_PUBLIC_ENDPOINT_URL"),
    }
    for key, value in fill.items():
        if key in ("access_key", "secret_key") and not env_keys:
            continue
        if data.get(key) is None and value:
            data[key] = value
    if not data.get("bucket"):
        return None
    return S3Spec.model_validate(data)


def _guard_each_request(request, **_):
    """botocore `before-send` hook for a job-named endpoint: the host is resolved and checked again
    right before each request (boto3 connects on its own, so the check cannot sit at connect time)."""
    from common.downloads import destination_refusal

    reason = destination_refusal(request.url)
    if reason:
        raise UploadError(f"s3: refused: {reason}")


def client(spec: S3Spec, endpoint_url: str | None = None):
    import boto3
    from botocore.config import Config

    endpoint = endpoint_url or (str(spec.endpoint_url) if spec.endpoint_url else None)
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=spec.region or "us-east-1",
        aws_access_key_id=spec.access_key,
        aws_secret_access_key=spec.secret_key,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path" if endpoint else "auto", "payload_signing_enabled": False},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=10,
            read_timeout=120,
            max_pool_connections=max(10, transfer_settings()[1] * 2),
        ),
    )
    if endpoint_url is None and job_endpoint(spec):
        s3.meta.events.register("before-send.s3", _guard_each_request)
    return s3


def transfer_settings() -> tuple[int, int]:
    """(part size in bytes, upload threads); files larger than one part go multipart."""
    part_mb = max(5.0, env_float("S3_PART_SIZE_MB", PART_SIZE_MB))  # S3's minimum part size is 5 MiB
    return int(part_mb * 2**20), max(1, int(env_float("S3_UPLOAD_CONCURRENCY", CONCURRENCY)))


def transfer_config():
    from boto3.s3.transfer import TransferConfig

    part, threads = transfer_settings()
    return TransferConfig(multipart_threshold=part, multipart_chunksize=part, max_concurrency=threads,
                          use_threads=True)


def object_key(spec: S3Spec, job_id: str, name: str) -> str:
    prefix = spec.key_prefix.strip("/")
    return "/".join(p for p in (prefix, job_id, name) if p)


def _classify(exc: Exception, where: str) -> UploadError:
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, UploadError):  # the guard refused the endpoint (before-send)
        return exc
    # upload_file wraps the ClientError in S3UploadFailedError; look for the original
    err: BaseException | None = exc
    for _ in range(5):
        if err is None or isinstance(err, ClientError):
            break
        err = err.__cause__ or err.__context__
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", "?"))
        message = err.response.get("Error", {}).get("Message", "")
        text = f"s3: {code} on {where}" + (f" ({message})" if message else "")
        return TransientUploadError(text) if code in _TRANSIENT_CODES else UploadError(text)
    if isinstance(exc, (BotoCoreError, OSError)):
        return TransientUploadError(f"s3: {type(exc).__name__} on {where}: {exc}")
    text = str(exc)
    if any(code in text for code in ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "NoSuchBucket")):
        return UploadError(f"s3: {text} on {where}")
    return TransientUploadError(f"s3: {type(exc).__name__} on {where}: {text}")


def upload(artifact: Artifact, spec: S3Spec, *, job_id: str, progress=None) -> dict:
    if not (spec.access_key and spec.secret_key):
        raise UploadError("s3: no credentials (output.s3.access_key/secret_key or env AWS_ACCESS_KEY_ID/"
                          "AWS_SECRET_ACCESS_KEY)")
    key = object_key(spec, job_id, artifact.name)
    where = f"s3://{spec.bucket}/{key}"
    s3 = client(spec)
    try:
        s3.upload_file(
            str(artifact.path), spec.bucket, key,
            ExtraArgs={"ContentType": artifact.content_type},
            Config=transfer_config(),
            Callback=byte_reporter(progress, "s3", artifact.size),
        )
    except Exception as exc:
        raise _classify(exc, where) from None
    signer = client(spec, str(spec.public_endpoint_url)) if spec.public_endpoint_url else s3
    url = signer.generate_presigned_url("get_object", Params={"Bucket": spec.bucket, "Key": key},
                                        ExpiresIn=spec.presign_expiry_seconds)
    return {
        "download_url": url,
        "expires_in_days": round(spec.presign_expiry_seconds / 86400, 2),
        "s3_uri": where,
    }
