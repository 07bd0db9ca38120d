"""The `output` upload spec shared by every image (docs/uploads.md).

Each image embeds `UploadSpec` in its own input schema, so a bad spec is an
`invalid_input` naming the field before any work starts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, TypeAdapter, ValidationError, model_validator

Method = Literal["huggingface", "s3", "presigned_put", "litterbox", "transfer_sh", "auto"]

MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # SigV4 limit; boto3 does not enforce it, servers reject at GET time


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HuggingFaceSpec(_Strict):
    token: str | None = Field(None, description="write token; falls back to env HF_TOKEN")
    repo_id: str | None = Field(None, description="owner/name; generated from the job id when missing")
    private: bool = Field(True, description="create the repo private (downloads then need a read token)")
    repo_type: Literal["model", "dataset"] = Field("model", description="kind of Hugging Face repo")
    path_in_repo: str | None = Field(None, description="folder inside the repo (default: the repo root)")


class S3Spec(_Strict):
    endpoint_url: HttpUrl | None = Field(None, description="R2 / MinIO / SeaweedFS endpoint; env S3_ENDPOINT_URL")
    bucket: str | None = Field(None, min_length=3, max_length=63, description="env S3_BUCKET")
    region: str | None = Field(None, description="AWS region, or 'auto' for R2; env AWS_DEFAULT_REGION")
    access_key: str | None = Field(None, description="env AWS_ACCESS_KEY_ID")
    secret_key: str | None = Field(None, description="env AWS_SECRET_ACCESS_KEY")
    key_prefix: str = Field("", max_length=512, description="objects go to <key_prefix>/<job id>/<file>")
    presign_expiry_seconds: int = Field(
        MAX_PRESIGN_SECONDS, ge=60, le=MAX_PRESIGN_SECONDS,
        description="lifetime of the returned download link (at most 7 days, the SigV4 limit)",
    )
    public_endpoint_url: HttpUrl | None = Field(
        None, description="endpoint used in download links when the upload endpoint is internal"
    )


class LitterboxSpec(_Strict):
    expiry: Literal["1h", "12h", "24h", "72h"] = Field("72h", description="how long the link lives")


class TransferShSpec(_Strict):
    base_url: HttpUrl | None = Field(None, description="self-hosted transfer.sh; env TRANSFER_SH_URL")
    max_days: int = Field(7, ge=1, le=365, description="days the upload is kept (Max-Days)")


class UploadSpec(_Strict):
    method: Method = Field("auto", description="auto tries huggingface, s3, litterbox, transfer_sh in turn")
    huggingface: HuggingFaceSpec | None = Field(None, description="Hugging Face Hub settings")
    s3: S3Spec | None = Field(None, description="S3 / R2 / MinIO settings")
    upload_url: HttpUrl | None = Field(None, description="a presigned PUT URL; its presence means presigned_put")
    litterbox: LitterboxSpec | None = Field(None, description="litterbox.catbox.moe settings")
    transfer_sh: TransferShSpec | None = Field(None, description="self-hosted transfer.sh settings")

    @model_validator(mode="after")
    def _presigned_put_needs_url(self) -> UploadSpec:
        if self.upload_url is not None and self.method == "auto":
            self.method = "presigned_put"
        if self.method == "presigned_put" and self.upload_url is None:
            raise ValueError("method 'presigned_put' needs 'upload_url' (a presigned PUT URL)")
        return self


def same_url(named: object, env_value: str | None) -> bool:
    """Whether a URL from the spec is the operator's `env_value` (both normalised as `HttpUrl` is)."""
    if not env_value:
        return False
    try:
        env_url = str(TypeAdapter(HttpUrl).validate_python(env_value))
    except ValidationError:
        return False
    return str(named).rstrip("/") == env_url.rstrip("/")
