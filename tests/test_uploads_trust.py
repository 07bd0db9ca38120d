"""Upload destinations and credentials (issue 12, items 4 and 5).

What a job names (`upload_url`, an S3 `endpoint_url`, a transfer.sh `base_url`) gets the SSRF guard of
downloads; what the operator's environment names is trusted. The operator's S3 keys and `HF_TOKEN`
go only where the operator's settings allow. Servers are local stand-ins on 127.0.0.1, so the guard
is switched off (`ALLOW_PRIVATE_NETWORK=1`) except where a test checks it.
"""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler

import pytest

from common import downloads
from common.jobs import JobError
from common.uploads import upload
from tests.fakes.threaded_http import BackgroundServer, read_body, reply

SIGNATURE = "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"


@pytest.fixture
def guard_on(monkeypatch):
    for name in ("ALLOW_PRIVATE_NETWORK", "ALLOW_PRIVATE_DOWNLOADS"):
        monkeypatch.delenv(name, raising=False)


class _Recorder(BaseHTTPRequestHandler):
    """Records every request; answers 403 with an S3-style error that echoes the signature back,
    padded to `state["pad"]` bytes (a storage server, or anything a job points an upload at)."""

    state: dict

    def log_message(self, *args):
        pass

    def _any(self):
        read_body(self)
        self.state["requests"].append({"method": self.command, "path": self.path, "headers": dict(self.headers)})
        head = (f"<Error><Code>SignatureDoesNotMatch</Code><SignatureProvided>{SIGNATURE}</SignatureProvided>"
                "</Error>").encode()
        pad = self.state["pad"]
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(head) + pad))
        self.end_headers()
        self.wfile.write(head)
        block = b"x" * (64 << 10)
        for _ in range(pad // len(block)):  # streamed: the server itself holds only a block
            self.wfile.write(block)

    do_PUT = do_POST = do_GET = do_HEAD = _any


@pytest.fixture
def recorder():
    state = {"requests": [], "pad": 0}
    with BackgroundServer(_Recorder, state) as server:
        server.state = state
        yield server


def _fails(files, spec, code: str) -> JobError:
    with pytest.raises(JobError) as info:
        upload(files, spec, job_id="j")
    assert info.value.code == code, info.value
    return info.value


# -- item 4: the SSRF guard for job-named destinations --------------------------------------------------

def test_job_named_upload_url_on_loopback_is_refused_before_sending(guard_on, recorder, lora_file):
    err = _fails([lora_file], {"upload_url": f"{recorder.url}/put/x?X-Amz-Signature={SIGNATURE}"}, "invalid_input")
    assert err.message.startswith("output.upload_url: refused: 127.0.0.1 resolves to 127.0.0.1, a loopback")
    assert "ALLOW_PRIVATE_NETWORK=1" in err.message
    assert recorder.state["requests"] == []


def test_job_named_s3_endpoint_and_transfer_sh_base_are_guarded(guard_on, recorder, lora_file):
    spec = {"method": "s3", "s3": {"endpoint_url": recorder.url, "bucket": "outputs", "access_key": "job-key-id",
                                   "secret_key": "job-secret-key"}}
    err = _fails([lora_file], spec, "invalid_input")
    assert err.message.startswith("output.s3.endpoint_url: refused:")
    err = _fails([lora_file], {"method": "transfer_sh", "transfer_sh": {"base_url": recorder.url}}, "invalid_input")
    assert err.message.startswith("output.transfer_sh.base_url: refused:")
    assert recorder.state["requests"] == []


def test_operator_destinations_are_trusted(guard_on, monkeypatch, transfer_sh_server, litterbox_server, lora_file):
    rec = upload([lora_file], {"method": "transfer_sh"}, job_id="j")  # TRANSFER_SH_URL, on 127.0.0.1
    assert rec["download_method"] == "transfer_sh"
    # the same address named by the job, spelled differently, is still the operator's
    monkeypatch.setenv("TRANSFER_SH_URL", transfer_sh_server.url.replace("127.0.0.1", "LOCALHOST"))
    spec = {"method": "transfer_sh", "transfer_sh": {"base_url": transfer_sh_server.url.replace("127.0.0.1",
                                                                                                "localhost")}}
    assert upload([lora_file], spec, job_id="j")["download_method"] == "transfer_sh"
    rec = upload([lora_file], {"method": "litterbox"}, job_id="j")  # LITTERBOX_API_URL
    assert rec["download_method"] == "litterbox"


def test_one_switch_allows_private_destinations_but_never_metadata(guard_on, monkeypatch, transfer_sh_server,
                                                                   lora_file):
    monkeypatch.setenv("ALLOW_PRIVATE_NETWORK", "1")
    rec = upload([lora_file], {"upload_url": f"{transfer_sh_server.url}/put/a.bin?sig=abcdef123"}, job_id="j")
    assert rec["download_method"] == "presigned_put"
    for url in ("http://169.254.169.254/latest/meta-data/x?sig=1", "http://[fd00:ec2::254]/x",
                "http://metadata.google.internal/computeMetadata/v1/x"):
        err = _fails([lora_file], {"upload_url": url}, "invalid_input")
        assert "metadata" in err.message and "ALLOW_PRIVATE_NETWORK" not in err.message


def test_address_is_checked_again_when_connecting(guard_on, monkeypatch, recorder, lora_file):
    # the name answered with a public address when checked, and with 127.0.0.1 when connected to
    monkeypatch.setattr(downloads, "destination_refusal", lambda url, allow_private=None: None)
    err = _fails([lora_file], {"upload_url": f"{recorder.url}/put/x?sig=abcdef123"}, "upload_failed")
    assert "refused: connected to 127.0.0.1, a loopback address" in err.details[0]
    assert recorder.state["requests"] == []


def test_answers_in_errors_are_bounded_and_masked(recorder, lora_file):
    import tracemalloc

    recorder.state["pad"] = 32 << 20
    url = (f"{recorder.url}/bucket/o.bin?X-Amz-Algorithm=AWS4-HMAC-SHA256"
           f"&X-Amz-Credential=AKIDEXAMPLE0%2F20261202%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Signature={SIGNATURE}")
    tracemalloc.start()
    try:
        err = _fails([lora_file], {"upload_url": url}, "upload_failed")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20  # a 32 MiB answer is not read whole (hashing the artifact takes 8 MiB)
    text = err.message + " ".join(err.details)
    assert "HTTP 403" in err.details[0] and "SignatureDoesNotMatch" in err.details[0]
    assert SIGNATURE not in text and len(err.details[0]) < 400
    assert recorder.state["requests"][0]["method"] == "PUT"


def test_redirects_are_not_followed(recorder, lora_file, transfer_sh_server):
    class Redirect(BaseHTTPRequestHandler):
        state: dict

        def log_message(self, *args):
            pass

        def do_PUT(self):
            read_body(self)
            reply(self, 307, b"", headers={"Location": f"{recorder.url}/elsewhere"})

    with BackgroundServer(Redirect, {}) as hop:
        err = _fails([lora_file], {"upload_url": f"{hop.url}/x?sig=abcdef123"}, "upload_failed")
    assert "HTTP 307" in err.details[0] and recorder.state["requests"] == []


# -- item 5: the operator's credentials go only to the operator's destinations -----------------------------

def test_operator_s3_keys_never_go_to_a_job_endpoint(monkeypatch, recorder, lora_file):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAOPERATOR00000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "operator-secret-key-000")
    monkeypatch.setenv("S3_BUCKET", "operator-bucket")
    for method in ("s3", "auto"):
        err = _fails([lora_file], {"method": method, "s3": {"endpoint_url": recorder.url}}, "invalid_input")
        assert err.message.startswith("output.s3.endpoint_url: an endpoint of your own needs your own")
    assert recorder.state["requests"] == []  # nothing sent, so nothing signed with the operator's keys
    # with keys of its own, the job's endpoint gets the job's keys
    spec = {"method": "s3", "s3": {"endpoint_url": recorder.url, "access_key": "AKIAJOBJOB0000000000",
                                   "secret_key": "job-secret"}}
    _fails([lora_file], spec, "upload_failed")
    auth = recorder.state["requests"][0]["headers"]["Authorization"]
    assert "AKIAJOBJOB0000000000" in auth and "AKIAOPERATOR" not in auth


def test_operator_s3_keys_work_with_the_operator_endpoint(s3_server, monkeypatch, lora_file, guard_on):
    monkeypatch.setenv("S3_ENDPOINT_URL", s3_server.endpoint_url)  # trusted, though on 127.0.0.1
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    spec = {"method": "s3", "s3": {"bucket": s3_server.bucket, "endpoint_url": s3_server.endpoint_url + "/"}}
    assert upload([lora_file], spec, job_id="trusted")["download_method"] == "s3"


def test_operator_hf_token_writes_only_to_its_owners_private_repos(hub_server, monkeypatch, lora_file):
    monkeypatch.setenv("HF_TOKEN", hub_server.token)  # owner: "tester"
    for name in ("HF_ALLOWED_NAMESPACES", "HF_ALLOW_PUBLIC"):
        monkeypatch.delenv(name, raising=False)
    repos = hub_server.state.repos
    err = _fails([lora_file], {"method": "huggingface", "huggingface": {"repo_id": "victim-org/loras"}},
                 "upload_failed")
    assert "writes only under tester" in err.details[0] and "model:victim-org/loras" not in repos
    err = _fails([lora_file], {"method": "huggingface", "huggingface": {"repo_id": "tester/pub", "private": False}},
                 "invalid_input")
    assert err.message.startswith("output.huggingface.private:") and "model:tester/pub" not in repos
    # an existing public repo of the owner stays untouched (create_repo keeps its visibility)
    repos["model:tester/showcase"] = {"private": False, "files": {"README.md": b"hi"}}
    err = _fails([lora_file], {"method": "huggingface", "huggingface": {"repo_id": "tester/showcase"}},
                 "upload_failed")
    assert "is public" in err.details[0] and set(repos["model:tester/showcase"]["files"]) == {"README.md"}
    # the owner's private repos, the operator's allowed namespaces, and public repos when allowed
    rec = upload([lora_file], {"method": "huggingface", "huggingface": {"repo_id": "tester/private-loras"}},
                 job_id="j")
    assert rec["download_method"] == "huggingface"
    monkeypatch.setenv("HF_ALLOWED_NAMESPACES", "team-a, victim-org")
    upload([lora_file], {"method": "huggingface", "huggingface": {"repo_id": "victim-org/loras"}}, job_id="j")
    monkeypatch.setenv("HF_ALLOW_PUBLIC", "1")
    upload([lora_file], {"method": "huggingface", "huggingface": {"repo_id": "tester/showcase"}}, job_id="j")
    assert "adapter_model.safetensors" in repos["model:tester/showcase"]["files"]


def test_a_jobs_own_hf_token_is_not_limited(hub_server, monkeypatch, lora_file):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    hub_server.state.valid_tokens["hf_jobowntoken0000000"] = "someone"
    spec = {"method": "huggingface", "huggingface": {"token": "hf_jobowntoken0000000", "repo_id": "an-org/pub",
                                                     "private": False}}
    assert upload([lora_file], spec, job_id="j")["download_method"] == "huggingface"
