"""litterbox, transfer.sh and presigned PUT uploads against the local stand-ins (tests/fakes)."""

import logging
import time

import pytest
import requests

from common.jobs import JobError
from common.uploads import upload


def test_litterbox_upload(litterbox_server, lora_file):
    rec = upload([lora_file], {"method": "litterbox", "litterbox": {"expiry": "24h"}}, job_id="j")
    assert rec["download_method"] == "litterbox" and rec["expires_in_days"] == 1.0
    assert requests.get(rec["download_url"], timeout=10).content == lora_file.read_bytes()
    sent = litterbox_server.state.requests[-1]
    assert sent["headers"]["User-Agent"].startswith("gpu-worker-images")


def test_litterbox_streams_the_file_with_progress(litterbox_server, tmp_path):
    from common.jobs import Progress

    video = tmp_path / 'clip "final".mp4'
    data = bytes(range(256)) * 4096  # 1 MiB
    video.write_bytes(data)
    progress = Progress({"id": "j"}, min_interval=0, send_to_runpod=False)
    rec = upload([video], {"method": "litterbox"}, job_id="j", progress=progress)
    assert requests.get(rec["download_url"], timeout=10).content == data
    sent = litterbox_server.state.requests[-1]
    assert int(sent["headers"]["Content-Length"]) == sent["size"] > len(data)  # one body, length known up front
    percents = [p["percent"] for p in progress.sent if p.get("method") == "litterbox" and "percent" in p]
    assert len(percents) > 3 and percents == sorted(percents) and percents[-1] == 100.0


def test_litterbox_expiry_is_validated(lora_file):
    with pytest.raises(JobError) as info:
        upload([lora_file], {"method": "litterbox", "litterbox": {"expiry": "7d"}}, job_id="j")
    assert info.value.code == "invalid_input"
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


def test_litterbox_non_link_answer_is_a_failure(litterbox_server, lora_file):
    litterbox_server.state.mode = "text"
    with pytest.raises(JobError) as info:
        upload([lora_file], {"method": "litterbox"}, job_id="j")
    assert "without a link" in info.value.details[0]
    assert len(litterbox_server.state.requests) == 1  # not a transient failure: no retry


def test_transfer_sh_upload_with_max_days_and_delete_url(transfer_sh_server, lora_file):
    rec = upload([lora_file], {"method": "transfer_sh", "transfer_sh": {"max_days": 3}}, job_id="j")
    assert rec["download_method"] == "transfer_sh" and rec["expires_in_days"] == 3
    assert rec["delete_url"].startswith(rec["download_url"] + "/")
    sent = transfer_sh_server.state.requests[-1]
    assert sent["path"] == "/adapter_model.safetensors" and sent["headers"]["Max-Days"] == "3"
    assert requests.get(rec["download_url"], timeout=10).content == lora_file.read_bytes()


def test_transfer_sh_500_is_retried_then_reported(transfer_sh_server, lora_file):
    transfer_sh_server.state.mode = "500"
    with pytest.raises(JobError) as info:
        upload([lora_file], {"method": "transfer_sh"}, job_id="j")
    assert info.value.code == "upload_failed"
    assert "transfer_sh: transfer.sh answered HTTP 500" in info.value.details[0]
    assert len(transfer_sh_server.state.requests) == 2  # UPLOAD_RETRIES=2 in tests


def test_transfer_sh_429_waits_as_long_as_retry_after_asks(transfer_sh_server, lora_file):
    transfer_sh_server.state.busy, transfer_sh_server.state.retry_after = 1, "1"
    started = time.monotonic()
    rec = upload([lora_file], {"method": "transfer_sh"}, job_id="j")
    assert rec["download_method"] == "transfer_sh" and len(transfer_sh_server.state.requests) == 2
    assert time.monotonic() - started >= 0.95  # the server's second, not the 0.05 s backoff of the tests


def test_presigned_put_streams_the_file_with_its_length(transfer_sh_server, lora_file):
    url = f"{transfer_sh_server.url}/put/adapter.safetensors?X-Amz-Signature=cafebabe1234&X-Amz-Expires=60"
    rec = upload([lora_file], {"upload_url": url}, job_id="j")
    assert rec["download_method"] == "presigned_put"
    assert rec["download_url"] == url.split("?")[0] and "note" in rec
    sent = transfer_sh_server.state.requests[-1]
    assert sent["size"] == lora_file.stat().st_size
    assert sent["headers"]["Content-Length"] == str(lora_file.stat().st_size)


def test_presigned_put_timeout_never_shows_the_signature(transfer_sh_server, lora_file, caplog):
    transfer_sh_server.state.mode = "hang"
    url = f"{transfer_sh_server.url}/put/a.safetensors?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=deadbeef5678"
    with caplog.at_level(logging.DEBUG), pytest.raises(JobError) as info:
        upload([lora_file], {"upload_url": url}, job_id="j")
    err = info.value
    assert err.code == "upload_failed" and "Timeout" in err.details[0]
    assert "deadbeef5678" not in err.message + " ".join(err.details) + caplog.text
