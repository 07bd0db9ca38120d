"""upload(): every method against a real S3 server (SeaweedFS) or a stand-in, auto fallback, never losing the file."""

import hashlib
import logging
import zipfile

import pytest
import requests

from common.jobs import JobError, Progress
from common.uploads import s3 as s3_method
from common.uploads import upload

HF_TOKEN = "hf_testwritetoken0000"


@pytest.fixture
def lora(tmp_path):
    path = tmp_path / "work" / "adapter_model.safetensors"
    path.parent.mkdir()
    path.write_bytes(bytes(range(256)) * 400)
    return path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- S3 on a real server -------------------------------------------------------------------------

def test_s3_multipart_upload_and_presigned_download(s3_server, tmp_path, monkeypatch):
    monkeypatch.setattr(s3_method, "MULTIPART_THRESHOLD", 5 * 2**20)
    monkeypatch.setattr(s3_method, "MULTIPART_CHUNKSIZE", 5 * 2**20)
    big = tmp_path / "video.mp4"
    data = bytes(range(256)) * (13 * 4096)  # 13 MiB -> 3 parts
    big.write_bytes(data)
    progress = Progress({"id": "j"}, min_interval=0, send_to_runpod=False)
    spec = {"method": "s3", "s3": s3_server.spec(key_prefix="runs", presign_expiry_seconds=3600)}

    rec = upload([big], spec, job_id="job-s3", progress=progress)

    assert rec["download_method"] == "s3" and rec["expires_in_days"] == round(3600 / 86400, 2)
    assert rec["size_bytes"] == len(data) and rec["sha256"] == sha(data)
    assert rec["attempts"] == [{"method": "s3", "ok": True}]
    head = s3_server.client().head_object(Bucket=s3_server.bucket, Key="runs/job-s3/video.mp4")
    assert head["ContentType"] == "video/mp4"
    assert head["ETag"].strip('"').endswith("-3")  # really multipart
    got = requests.get(rec["download_url"], timeout=30)
    assert got.status_code == 200 and got.content == data
    assert any(p["stage"] == "upload" and p.get("percent") == 100.0 for p in progress.sent)


def test_s3_wrong_secret_is_a_clear_upload_failed_without_the_secret(s3_server, lora, caplog):
    wrong = "definitely-wrong-secret-123"
    spec = {"method": "s3", "s3": s3_server.spec(secret_key=wrong)}
    with caplog.at_level(logging.DEBUG), pytest.raises(JobError) as info:
        upload([lora], spec, job_id="job-bad")
    err = info.value
    assert err.code == "upload_failed"
    assert "SignatureDoesNotMatch" in " ".join(err.details)
    assert wrong not in str(err) + " ".join(err.details) + caplog.text


def test_s3_credentials_from_environment(s3_server, lora, monkeypatch):
    monkeypatch.setenv("S3_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("S3_BUCKET", s3_server.bucket)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    rec = upload([lora], None, job_id="job-env")  # auto: no HF token, S3 from env comes first
    assert rec["download_method"] == "s3"
    assert requests.get(rec["download_url"], timeout=30).content == lora.read_bytes()


def test_presign_expiry_over_seven_days_is_refused_before_uploading(lora):
    with pytest.raises(JobError) as info:
        upload([lora], {"method": "s3", "s3": {"bucket": "my-bucket", "presign_expiry_seconds": 8 * 86400}}, job_id="j")
    assert info.value.code == "invalid_input"
    assert info.value.details[0].startswith("output.s3.presign_expiry_seconds:")


def test_several_files_go_as_one_zip_storing_media(s3_server, tmp_path):
    a = tmp_path / "a.png"
    a.write_bytes(b"\x89PNG" + bytes(5000))
    b = tmp_path / "meta.json"
    b.write_text('{"seed": 1}')
    rec = upload([a, b], {"method": "s3", "s3": s3_server.spec()}, job_id="job-zip", zip_name="outputs.zip")
    blob = requests.get(rec["download_url"], timeout=30).content
    zpath = tmp_path / "got.zip"
    zpath.write_bytes(blob)
    with zipfile.ZipFile(zpath) as zf:
        assert sorted(zf.namelist()) == ["a.png", "meta.json"]
        assert zf.getinfo("a.png").compress_type == zipfile.ZIP_STORED
    assert rec["archive_size_mb"] == round(len(blob) / 2**20, 2) and rec["sha256"] == sha(blob)


# --- Hugging Face Hub stand-in --------------------------------------------------------------------

def test_huggingface_raw_safetensors_in_one_commit(hub_server, lora, tmp_path):
    config = lora.parent / "adapter_config.json"
    config.write_text("{}")
    spec = {"method": "huggingface", "huggingface": {"token": HF_TOKEN, "repo_id": "tester/my-lora"}}
    before = len(hub_server.state.commits)
    rec = upload([lora, config], spec, job_id="job-hf")
    assert len(hub_server.state.commits) == before + 1
    assert hub_server.state.files("tester/my-lora")["adapter_model.safetensors"] == lora.read_bytes()
    assert rec["safetensors_url"] == rec["download_url"] == \
        f"{hub_server.url}/tester/my-lora/resolve/main/adapter_model.safetensors?download=true"
    assert rec["repo_url"] == f"{hub_server.url}/tester/my-lora"
    assert rec["expires_in_days"] is None and "archive_size_mb" not in rec
    assert hub_server.state.repos["model:tester/my-lora"]["private"] is True
    got = requests.get(rec["download_url"], headers={"Authorization": f"Bearer {HF_TOKEN}"}, timeout=10)
    assert got.content == lora.read_bytes()


def test_huggingface_repo_name_without_owner_gets_the_token_owner(hub_server, lora):
    rec = upload([lora], {"method": "huggingface", "huggingface": {"token": HF_TOKEN, "repo_id": "plain",
                                                                   "private": False}}, job_id="j")
    assert rec["repo_url"].endswith("/tester/plain")
    assert hub_server.state.repos["model:tester/plain"]["private"] is False


def test_huggingface_bad_token_names_write_access(hub_server, lora):
    with pytest.raises(JobError) as info:
        upload([lora], {"method": "huggingface", "huggingface": {"token": "hf_notvalidtoken9999",
                                                                 "repo_id": "tester/x"}}, job_id="j")
    assert info.value.code == "upload_failed"
    assert "401" in info.value.details[0] and "write access" in info.value.details[0]
    assert "hf_notvalidtoken9999" not in repr(info.value.details)


def test_method_without_its_settings_is_invalid_input(lora, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("TRANSFER_SH_URL", raising=False)
    with pytest.raises(JobError, match="output.method: 'huggingface' needs output.huggingface.token"):
        upload([lora], {"method": "huggingface"}, job_id="j")
    with pytest.raises(JobError, match="transfer_sh.base_url"):
        upload([lora], {"method": "transfer_sh"}, job_id="j")


# --- litterbox and transfer.sh stand-ins ----------------------------------------------------------

def test_litterbox_upload(litterbox_server, lora):
    rec = upload([lora], {"method": "litterbox", "litterbox": {"expiry": "24h"}}, job_id="j")
    assert rec["download_method"] == "litterbox" and rec["expires_in_days"] == 1.0
    assert requests.get(rec["download_url"], timeout=10).content == lora.read_bytes()
    sent = litterbox_server.state.requests[-1]
    assert sent["headers"]["User-Agent"]


def test_litterbox_expiry_is_validated(lora):
    with pytest.raises(JobError) as info:
        upload([lora], {"method": "litterbox", "litterbox": {"expiry": "7d"}}, job_id="j")
    assert info.value.details[0].startswith("output.litterbox.expiry:")


def test_litterbox_size_limit_checked_before_sending(litterbox_server, tmp_path, monkeypatch):
    from common.uploads import litterbox

    monkeypatch.setattr(litterbox, "MAX_BYTES", 1000)
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(2000))
    with pytest.raises(JobError) as info:
        upload([big], {"method": "litterbox"}, job_id="j")
    assert "over its 1 GB limit" in info.value.details[0]
    assert litterbox_server.state.requests == []


def test_litterbox_non_link_answer_is_a_failure(litterbox_server, lora):
    litterbox_server.state.mode = "text"
    with pytest.raises(JobError) as info:
        upload([lora], {"method": "litterbox"}, job_id="j")
    assert "without a link" in info.value.details[0]


def test_transfer_sh_upload_with_max_days_and_delete_url(transfer_sh_server, lora):
    rec = upload([lora], {"method": "transfer_sh", "transfer_sh": {"max_days": 3}}, job_id="j")
    assert rec["download_method"] == "transfer_sh" and rec["expires_in_days"] == 3
    assert rec["delete_url"].startswith(rec["download_url"])
    assert transfer_sh_server.state.requests[-1]["headers"]["Max-Days"] == "3"
    assert requests.get(rec["download_url"], timeout=10).content == lora.read_bytes()


def test_presigned_put_streams_the_file(transfer_sh_server, lora):
    url = f"{transfer_sh_server.url}/put/adapter.safetensors?X-Amz-Signature=cafebabe1234&X-Amz-Expires=60"
    rec = upload([lora], {"upload_url": url}, job_id="j")
    assert rec["download_method"] == "presigned_put"
    assert rec["download_url"] == url.split("?")[0]
    assert transfer_sh_server.state.requests[-1]["size"] == lora.stat().st_size


# --- auto: order, fallback, never losing the artifact --------------------------------------------

def test_auto_falls_back_from_a_500_to_the_next_method(hub_server, litterbox_server, lora, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    hub_server.state.fail_commits = 10
    rec = upload([lora], {"huggingface": {"repo_id": "tester/fallback"}}, job_id="j")
    assert rec["download_method"] == "litterbox"
    assert [a["method"] for a in rec["attempts"]] == ["huggingface", "litterbox"]
    assert rec["attempts"][0]["ok"] is False and "500" in rec["attempts"][0]["error"]


def test_auto_falls_back_after_a_timeout(litterbox_server, transfer_sh_server, lora):
    litterbox_server.state.mode = "hang"
    rec = upload([lora], {"method": "auto"}, job_id="j")
    assert [a["method"] for a in rec["attempts"]] == ["litterbox", "transfer_sh"]
    assert "Timeout" in rec["attempts"][0]["error"]
    assert len(litterbox_server.state.requests) == 2  # retried once before moving on


def test_auto_all_failing_keeps_the_file_on_the_volume(litterbox_server, transfer_sh_server, lora, tmp_path):
    litterbox_server.state.mode = "500"
    transfer_sh_server.state.mode = "500"
    volume = tmp_path / "runpod-volume"
    with pytest.raises(JobError) as info:
        upload([lora], None, job_id="job-lost", volume_dir=volume)
    err = info.value
    kept = volume / "job-lost" / lora.name
    assert err.code == "upload_failed"
    assert kept.read_bytes() == lora.read_bytes()
    assert str(volume / "job-lost") in err.message
    assert [d.split(":")[0] for d in err.details[:2]] == ["litterbox", "transfer_sh"]


def test_files_already_on_the_volume_stay_in_place(transfer_sh_server, lora, monkeypatch):
    monkeypatch.setenv("LITTERBOX_ENABLED", "false")
    rec = upload([lora], None, job_id="j", volume_dir=lora.parent.parent)
    assert rec["network_volume_path"] == str(lora.parent.resolve())
    assert rec["download_method"] == "transfer_sh"


def test_nothing_configured_is_upload_failed(lora, monkeypatch, fast_retries):
    monkeypatch.setenv("LITTERBOX_ENABLED", "false")
    with pytest.raises(JobError, match="no upload method is configured"):
        upload([lora], None, job_id="j")


def test_secrets_in_spec_never_reach_logs_progress_or_results(hub_server, litterbox_server, lora, caplog):
    hub_server.state.fail_commits = 10
    progress = Progress({"id": "j"}, min_interval=0, send_to_runpod=False)
    spec = {"huggingface": {"token": HF_TOKEN, "repo_id": "tester/secret-test"}}
    with caplog.at_level(logging.DEBUG):
        rec = upload([lora], spec, job_id="j", progress=progress)
    text = caplog.text + repr(rec) + repr(progress.sent)
    assert HF_TOKEN not in text
    assert rec["download_method"] == "litterbox"
