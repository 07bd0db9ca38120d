"""upload() to a real S3 server (SeaweedFS `weed mini` on 127.0.0.1): multipart, presigned GET, errors."""

import hashlib
import logging
import zipfile

import pytest
import requests

from common.jobs import JobError, Progress
from common.redaction import RedactingFormatter
from common.uploads import upload


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_multipart_upload_and_presigned_download(s3_server, tmp_path, monkeypatch):
    monkeypatch.setenv("S3_PART_SIZE_MB", "5")
    big = tmp_path / "video.mp4"
    data = bytes(range(256)) * (13 * 4096)  # 13 MiB -> 3 parts
    big.write_bytes(data)
    progress = Progress({"id": "j"}, min_interval=60, send_to_runpod=False)
    spec = {"method": "s3", "s3": s3_server.spec(key_prefix="runs", presign_expiry_seconds=3600)}

    rec = upload([big], spec, job_id="job-s3", progress=progress)

    assert rec["download_method"] == "s3" and rec["expires_in_days"] == round(3600 / 86400, 2)
    assert rec["size_bytes"] == len(data) and rec["sha256"] == sha(data)
    assert rec["attempts"] == [{"method": "s3", "ok": True}]
    head = s3_server.client().head_object(Bucket=s3_server.bucket, Key="runs/job-s3/video.mp4")
    assert head["ContentType"] == "video/mp4"
    assert head["ETag"].strip('"').endswith("-3")  # really multipart
    assert "X-Amz-Expires=3600" in rec["download_url"]
    got = requests.get(rec["download_url"], timeout=30)
    assert got.status_code == 200 and got.content == data
    # rate-limited to one update a minute, yet the final 100% still goes out
    assert progress.sent[-1]["stage"] == "upload" and progress.sent[-1]["percent"] == 100.0


def test_wrong_secret_is_a_clear_upload_failed_without_the_secret(s3_server, lora_file, caplog):
    wrong = "definitely-wrong-secret-123"
    spec = {"method": "s3", "s3": s3_server.spec(secret_key=wrong)}
    with caplog.at_level(logging.DEBUG), pytest.raises(JobError) as info:
        upload([lora_file], spec, job_id="job-bad")
    err = info.value
    assert err.code == "upload_failed"
    assert "SignatureDoesNotMatch" in " ".join(err.details)
    assert f"s3://{s3_server.bucket}/job-bad/adapter_model.safetensors" in " ".join(err.details)
    assert wrong not in str(err) + " ".join(err.details) + caplog.text


def test_secret_in_spec_never_reaches_logs_progress_or_result(s3_server, lora_file, caplog):
    progress = Progress({"id": "j"}, min_interval=0, send_to_runpod=False)
    with caplog.at_level(logging.DEBUG):
        rec = upload([lora_file], {"method": "s3", "s3": s3_server.spec()}, job_id="job-quiet", progress=progress)
    assert requests.get(rec["download_url"], timeout=30).content == lora_file.read_bytes()
    assert s3_server.secret_key not in caplog.text + repr(rec) + repr(progress.sent)


def test_credentials_from_environment(s3_server, lora_file, monkeypatch):
    monkeypatch.setenv("S3_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("S3_BUCKET", s3_server.bucket)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    rec = upload([lora_file], None, job_id="job-env")  # auto: no HF token, S3 from env comes first
    assert rec["download_method"] == "s3" and rec["attempts"] == [{"method": "s3", "ok": True}]
    assert rec["expires_in_days"] == 7
    assert requests.get(rec["download_url"], timeout=30).content == lora_file.read_bytes()


def test_presign_expiry_over_seven_days_is_refused_before_uploading(lora_file):
    with pytest.raises(JobError) as info:
        upload([lora_file], {"method": "s3", "s3": {"bucket": "my-bucket", "presign_expiry_seconds": 8 * 86400}},
               job_id="j")
    assert info.value.code == "invalid_input"
    assert info.value.details[0].startswith("output.s3.presign_expiry_seconds:")


def test_several_files_go_as_one_zip_kept_on_the_volume(s3_server, tmp_path):
    a = tmp_path / "a.png"
    a.write_bytes(b"\x89PNG" + bytes(5000))
    b = tmp_path / "meta.json"
    b.write_text('{"seed": 1}')
    volume = tmp_path / "volume"
    rec = upload([a, b], {"method": "s3", "s3": s3_server.spec()}, job_id="job-zip", zip_name="outputs.zip",
                 volume_dir=volume)
    assert rec["download_url"].split("?")[0].endswith("/job-zip/outputs.zip")
    blob = requests.get(rec["download_url"], timeout=30).content
    kept = volume / "job-zip"
    assert rec["network_volume_path"] == str(kept)
    assert (kept / "outputs.zip").read_bytes() == blob
    with zipfile.ZipFile(kept / "outputs.zip") as zf:
        assert sorted(zf.namelist()) == ["a.png", "meta.json"]
        assert zf.read("meta.json") == b'{"seed": 1}'
    assert rec["archive_size_mb"] == round(len(blob) / 2**20, 2) and rec["sha256"] == sha(blob)


@pytest.mark.parametrize("signed_type", [None, "application/octet-stream"])
def test_presigned_put_url_from_s3(s3_server, lora_file, signed_type):
    """A real SigV4 presigned PUT, with and without Content-Type among its signed headers."""
    params = {"Bucket": s3_server.bucket, "Key": f"put/{signed_type is not None}.safetensors"}
    if signed_type:
        params["ContentType"] = signed_type
    url = s3_server.client().generate_presigned_url("put_object", Params=params, ExpiresIn=600)
    assert ("content-type" in url.lower()) is (signed_type is not None)
    rec = upload([lora_file], {"upload_url": url}, job_id="j")
    assert rec["download_method"] == "presigned_put" and rec["download_url"] == url.split("?")[0]
    body = s3_server.client().get_object(**{k: v for k, v in params.items() if k != "ContentType"})["Body"].read()
    assert body == lora_file.read_bytes()


def test_presigned_put_refused_by_s3_is_upload_failed_without_the_signature(s3_server, lora_file, caplog):
    url = s3_server.client().generate_presigned_url(
        "put_object", Params={"Bucket": s3_server.bucket, "Key": "put/tampered.bin"}, ExpiresIn=600)
    signature = url.split("X-Amz-Signature=")[1]
    tampered = url.replace(signature, "0" * len(signature))
    with caplog.at_level(logging.DEBUG), pytest.raises(JobError) as info:
        upload([lora_file], {"upload_url": tampered}, job_id="j")
    err = info.value
    assert err.code == "upload_failed" and "HTTP 403" in err.details[0] and "SignatureDoesNotMatch" in err.details[0]
    # urllib3's own DEBUG lines carry the URL; the worker's log handler (RedactingFormatter) masks them
    emitted = "\n".join(RedactingFormatter().format(r) for r in caplog.records)
    assert "X-Amz-Signature" not in emitted
    ours = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    assert "0" * len(signature) not in err.message + " ".join(err.details) + ours + emitted
