"""upload()'s `auto`: order, retries and fallback, never losing the artifact, no secrets anywhere."""

import logging

import pytest
import requests

from common.jobs import JobError, Progress
from common.uploads import upload

HF_TOKEN = "hf_testwritetoken0000"


def test_invalid_spec_is_invalid_input_naming_the_field(lora_file):
    with pytest.raises(JobError) as info:
        upload([lora_file], {"method": "ftp"}, job_id="j")
    assert info.value.code == "invalid_input" and info.value.details[0].startswith("output.method:")
    with pytest.raises(JobError) as info:
        upload([lora_file], {"s3": {"bucket": "bucket", "secret": "x"}}, job_id="j")
    assert info.value.details[0].startswith("output.s3.secret:")


def test_method_without_its_settings_is_invalid_input(lora_file, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("TRANSFER_SH_URL", raising=False)
    with pytest.raises(JobError, match="output.method: 'huggingface' needs output.huggingface.token"):
        upload([lora_file], {"method": "huggingface"}, job_id="j")
    with pytest.raises(JobError, match="transfer_sh.base_url"):
        upload([lora_file], {"method": "transfer_sh"}, job_id="j")


def test_hub_500_falls_back_to_s3(hub_server, s3_server, lora_file, fast_retries):
    hub_server.state.fail_commits = 10
    spec = {"huggingface": {"token": HF_TOKEN, "repo_id": "tester/fallback-s3"}, "s3": s3_server.spec()}
    rec = upload([lora_file], spec, job_id="job-fb")
    assert rec["download_method"] == "s3"
    assert [(a["method"], a["ok"]) for a in rec["attempts"]] == [("huggingface", False), ("s3", True)]
    assert "500" in rec["attempts"][0]["error"]
    assert requests.get(rec["download_url"], timeout=30).content == lora_file.read_bytes()


def test_hub_first_when_configured(hub_server, s3_server, lora_file, fast_retries):
    spec = {"huggingface": {"token": HF_TOKEN, "repo_id": "tester/first"}, "s3": s3_server.spec()}
    rec = upload([lora_file], spec, job_id="j")
    assert rec["download_method"] == "huggingface" and rec["attempts"] == [{"method": "huggingface", "ok": True}]


def test_falls_back_from_a_500_to_litterbox(hub_server, litterbox_server, lora_file, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    hub_server.state.fail_commits = 10
    rec = upload([lora_file], {"huggingface": {"repo_id": "tester/fallback"}}, job_id="j")
    assert rec["download_method"] == "litterbox"
    assert [a["method"] for a in rec["attempts"]] == ["huggingface", "litterbox"]
    assert rec["attempts"][0]["ok"] is False and "500" in rec["attempts"][0]["error"]


def test_falls_back_after_a_timeout(litterbox_server, transfer_sh_server, lora_file):
    litterbox_server.state.mode = "hang"
    rec = upload([lora_file], {"method": "auto"}, job_id="j")
    assert [a["method"] for a in rec["attempts"]] == ["litterbox", "transfer_sh"]
    assert "Timeout" in rec["attempts"][0]["error"]
    assert len(litterbox_server.state.requests) == 2  # retried once before moving on
    assert requests.get(rec["download_url"], timeout=10).content == lora_file.read_bytes()


def test_litterbox_skipped_when_over_its_limit(litterbox_server, transfer_sh_server, lora_file, monkeypatch):
    from common.uploads import litterbox

    monkeypatch.setattr(litterbox, "MAX_BYTES", 1000)
    rec = upload([lora_file], None, job_id="j")
    assert [a["method"] for a in rec["attempts"]] == ["transfer_sh"]
    assert litterbox_server.state.requests == []


def test_all_failing_keeps_the_file_on_the_volume(litterbox_server, transfer_sh_server, lora_file, tmp_path):
    litterbox_server.state.mode = "500"
    transfer_sh_server.state.mode = "text"
    volume = tmp_path / "runpod-volume"
    with pytest.raises(JobError) as info:
        upload([lora_file], None, job_id="job-lost", volume_dir=volume)
    err = info.value
    kept = volume / "job-lost" / lora_file.name
    assert err.code == "upload_failed"
    assert kept.read_bytes() == lora_file.read_bytes()
    assert str(volume / "job-lost") in err.message
    assert [d.split(":")[0] for d in err.details[:2]] == ["litterbox", "transfer_sh"]
    assert err.details[-1] == f"kept on the volume at {volume / 'job-lost'}"


def test_files_already_on_the_volume_stay_in_place(transfer_sh_server, lora_file, monkeypatch):
    monkeypatch.setenv("LITTERBOX_ENABLED", "false")
    rec = upload([lora_file], None, job_id="j", volume_dir=lora_file.parent.parent)
    assert rec["network_volume_path"] == str(lora_file.parent.resolve())
    assert rec["download_method"] == "transfer_sh"


def test_nothing_configured_is_upload_failed(lora_file, monkeypatch, fast_retries):
    monkeypatch.setenv("LITTERBOX_ENABLED", "false")
    with pytest.raises(JobError, match="no upload method is configured") as info:
        upload([lora_file], None, job_id="j")
    assert info.value.code == "upload_failed"


def test_secrets_in_spec_never_reach_logs_progress_or_results(hub_server, litterbox_server, lora_file, caplog):
    hub_server.state.fail_commits = 10
    progress = Progress({"id": "j"}, min_interval=0, send_to_runpod=False)
    spec = {"huggingface": {"token": HF_TOKEN, "repo_id": "tester/secret-test"}}
    with caplog.at_level(logging.DEBUG):
        rec = upload([lora_file], spec, job_id="j", progress=progress)
    assert rec["download_method"] == "litterbox"
    assert any(p.get("method") == "litterbox" and p.get("percent") == 100.0 for p in progress.sent)
    assert HF_TOKEN not in caplog.text + repr(rec) + repr(progress.sent)


def test_check_refuses_what_upload_would_before_any_work(monkeypatch, fast_retries):
    from common.uploads import check

    with pytest.raises(JobError, match="'s3' needs output.s3.access_key") as info:
        check({"method": "s3", "s3": {"bucket": "outputs"}})
    assert info.value.code == "invalid_input"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "envaccesskey")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecretkey")
    assert check({"method": "s3", "s3": {"bucket": "outputs"}}).method == "s3"
    assert check(None).method == "auto"  # auto: whatever is configured is tried at upload time


def test_zip_made_without_a_volume_is_removed_after_sending(transfer_sh_server, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setenv("LITTERBOX_ENABLED", "false")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    files = [tmp_path / "0.png", tmp_path / "1.png"]
    for i, f in enumerate(files):
        f.write_bytes(bytes([i]) * 3000)
    rec = upload(files, None, job_id="job-tmp", zip_name="pics.zip")
    assert rec["download_url"].endswith("/pics.zip") and rec["archive_size_mb"] >= 0
    assert "network_volume_path" not in rec
    assert list(scratch.iterdir()) == [] and all(f.is_file() for f in files)


def test_failure_without_a_volume_says_where_the_outputs_are(transfer_sh_server, lora_file, monkeypatch):
    monkeypatch.setenv("LITTERBOX_ENABLED", "false")
    transfer_sh_server.state.mode = "500"
    with pytest.raises(JobError) as info:
        upload([lora_file], None, job_id="j")
    assert info.value.details[-1] == f"no network volume given; the outputs are still at {lora_file.parent}"
