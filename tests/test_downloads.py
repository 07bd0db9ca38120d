"""common.downloads against a real HTTP server on 127.0.0.1 (tests/fakes/http_files.py).

The server drops connections, ignores Range, answers 503/429, stalls and redirects on request;
nothing in the network stack is mocked. The SSRF tests switch ALLOW_PRIVATE_DOWNLOADS off; where
a test needs a "public" first hop or a rebinding DNS answer it patches name resolution or the
address classification, and says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time

import pytest

from common import downloads
from common.downloads import download
from common.jobs import JobError
from tests.fakes.http_files import FileServer, Route
from tests.fakes.threaded_http import free_port

MB = 1 << 20


@pytest.fixture(scope="module")
def server():
    with FileServer() as srv:
        yield srv


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(downloads, "BACKOFF_SECONDS", 0.01)


@pytest.fixture
def switch_off(monkeypatch):
    monkeypatch.delenv("ALLOW_PRIVATE_DOWNLOADS", raising=False)


def _route(server, name, data, **kw):
    path = f"/{name}"
    server.add(path, Route(data, **kw))
    return server.url(path), path


def _download_error(*args, **kwargs) -> JobError:
    with pytest.raises(JobError) as info:
        download(*args, **kwargs)
    assert info.value.code == "download_failed"
    return info.value


def test_download_reports_progress_and_verifies_checksum(server, tmp_path):
    data = os.urandom(3 * MB + 17)
    url, _ = _route(server, "plain.bin", data)
    seen = []
    out = download(url, tmp_path / "sub" / "plain.bin", max_bytes=10 * MB,
                   sha256=hashlib.sha256(data).hexdigest().upper(), progress=lambda d, t: seen.append((d, t)))
    assert out.read_bytes() == data
    assert seen[0] == (0, len(data)) and seen[-1] == (len(data), len(data))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert sorted(p.name for p in out.parent.iterdir()) == ["plain.bin"]  # no .partial / sidecar left


def test_resume_after_dropped_connection_uses_range(server, tmp_path):
    data = os.urandom(4 * MB)
    url, path = _route(server, "drop.bin", data, drop_after=2 * MB)
    out = download(url, tmp_path / "drop.bin", max_bytes=10 * MB, sha256=hashlib.sha256(data).hexdigest())
    assert out.read_bytes() == data
    first, second = server.seen(path)
    assert "Range" not in first.headers
    offset = int(second.headers["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < offset <= 2 * MB
    assert second.headers["If-Range"] == server.routes[path].etag


def test_server_without_range_support_restarts_from_zero(server, tmp_path):
    data = os.urandom(2 * MB)
    url, path = _route(server, "norange.bin", data, ranges=False, drop_after=MB)
    out = download(url, tmp_path / "norange.bin", max_bytes=10 * MB)
    assert out.read_bytes() == data
    assert len(server.seen(path)) == 2


def test_partial_file_of_a_failed_call_is_resumed_by_the_next(server, tmp_path, monkeypatch):
    data = os.urandom(2 * MB)
    url, path = _route(server, "later.bin", data, drop_after=MB)
    monkeypatch.setattr(downloads, "RETRIES", 0)
    err = _download_error(url, tmp_path / "later.bin", max_bytes=10 * MB)
    assert "kept for a later resume" in err.message
    partial = tmp_path / "later.bin.partial"
    kept = partial.stat().st_size
    assert 0 < kept <= MB and not (tmp_path / "later.bin").exists()

    out = download(url, tmp_path / "later.bin", max_bytes=10 * MB, sha256=hashlib.sha256(data).hexdigest())
    assert out.read_bytes() == data
    assert server.seen(path)[-1].headers["Range"] == f"bytes={kept}-"
    assert not partial.exists()


def test_partial_of_a_changed_file_is_not_spliced(server, tmp_path, monkeypatch):
    old, new = os.urandom(2 * MB), os.urandom(2 * MB)
    url, path = _route(server, "changed.bin", old, drop_after=MB)
    monkeypatch.setattr(downloads, "RETRIES", 0)
    _download_error(url, tmp_path / "changed.bin", max_bytes=10 * MB)
    server.add(path, Route(new))  # the file changes on the server (new ETag)
    out = download(url, tmp_path / "changed.bin", max_bytes=10 * MB)
    assert out.read_bytes() == new
    last = server.seen(path)[-1]
    assert last.headers["If-Range"] != server.routes[path].etag  # asked for a range of the old version, got 200


def test_partial_of_another_url_is_discarded(server, tmp_path):
    data = os.urandom(MB)
    url, path = _route(server, "fresh.bin", data)
    (tmp_path / "fresh.bin.partial").write_bytes(b"junk from somewhere else")
    out = download(url, tmp_path / "fresh.bin", max_bytes=10 * MB)
    assert out.read_bytes() == data
    assert "Range" not in server.seen(path)[-1].headers


def test_transient_statuses_are_retried(server, tmp_path):
    data = b"hello after a while"
    url, path = _route(server, "busy.txt", data, statuses=[503, 429, 502], retry_after="0")
    assert download(url, tmp_path / "busy.txt", max_bytes=MB).read_bytes() == data
    assert len(server.seen(path)) == 4


def test_retry_after_as_an_http_date_is_honoured(server, tmp_path, monkeypatch):
    monkeypatch.setattr(downloads, "BACKOFF_SECONDS", 30.0)  # what it would wait without the server's word
    url, _ = _route(server, "dated.txt", b"ok", statuses=[503], retry_after="Wed, 21 Oct 2015 07:28:00 GMT")
    started = time.monotonic()
    assert download(url, tmp_path / "dated.txt", max_bytes=MB, timeout_s=20).read_bytes() == b"ok"
    assert time.monotonic() - started < 5  # a date in the past: retry at once


def test_gives_up_after_retries(server, tmp_path, monkeypatch):
    url, path = _route(server, "down.txt", b"x", statuses=[503] * 20)
    monkeypatch.setattr(downloads, "RETRIES", 3)
    err = _download_error(url, tmp_path / "down.txt", max_bytes=MB)
    assert "HTTP 503" in err.message and "gave up after 3 retries" in err.message
    assert len(server.seen(path)) == 4


def test_stop_ends_a_download_waiting_to_retry(server, tmp_path, monkeypatch):
    url, path = _route(server, "flaky.bin", b"x", statuses=[503] * 20)
    monkeypatch.setattr(downloads, "BACKOFF_SECONDS", 30.0)  # it would sit in its backoff for 30 s
    stop, errors = threading.Event(), []

    def run() -> None:
        try:
            download(url, tmp_path / "flaky.bin", max_bytes=MB, stop=stop)
        except JobError as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    while not server.seen(path):
        time.sleep(0.01)
    stop.set()  # the job was cancelled
    worker.join(timeout=5)
    assert not worker.is_alive() and errors and errors[0].code == "cancelled"
    assert "stopped: the job ended" in errors[0].message and len(server.seen(path)) == 1


def test_stop_ends_a_download_between_chunks(server, tmp_path):
    url, _ = _route(server, "big.bin", os.urandom(4 * MB))
    stop = threading.Event()
    with pytest.raises(JobError) as info:
        download(url, tmp_path / "big.bin", max_bytes=8 * MB, stop=stop,
                 progress=lambda done, total: done and stop.set())  # stop after the first chunk
    assert info.value.code == "cancelled"
    assert not list(tmp_path.iterdir())  # nothing half-written is left behind


def test_client_errors_are_not_retried(server, tmp_path):
    err = _download_error(server.url("/missing.bin"), tmp_path / "m.bin", max_bytes=MB)
    assert "HTTP 404" in err.message and str(server.port) in err.message
    assert len(server.seen("/missing.bin")) == 1
    assert not list(tmp_path.iterdir())


def test_read_timeout_is_retried(server, tmp_path, monkeypatch):
    monkeypatch.setattr(downloads, "READ_TIMEOUT", 1.0)
    url, path = _route(server, "slow.bin", b"finally", stall=5.0)  # stalls the first response only
    assert download(url, tmp_path / "slow.bin", max_bytes=MB).read_bytes() == b"finally"
    assert len(server.seen(path)) == 2


def test_size_cap_from_content_length(server, tmp_path):
    url, _ = _route(server, "big.bin", os.urandom(2 * MB))
    err = _download_error(url, tmp_path / "big.bin", max_bytes=MB)
    assert f"{2 * MB} bytes, over the limit of {MB} bytes" in err.message
    assert not list(tmp_path.iterdir())


def test_size_cap_while_streaming_without_content_length(server, tmp_path):
    url, _ = _route(server, "nolen.bin", os.urandom(3 * MB), content_length=False)
    err = _download_error(url, tmp_path / "nolen.bin", max_bytes=MB)
    assert f"exceeds the limit of {MB} bytes" in err.message
    assert not list(tmp_path.iterdir())
    # Without a cap problem the same route downloads fine (the body ends with the connection).
    assert download(url, tmp_path / "nolen.bin", max_bytes=10 * MB).stat().st_size == 3 * MB


def test_checksum_mismatch_deletes_the_download(server, tmp_path):
    url, _ = _route(server, "sum.bin", b"actual content")
    err = _download_error(url, tmp_path / "sum.bin", max_bytes=MB, sha256="0" * 64)
    assert "sha256 mismatch" in err.message and "0" * 64 in err.message
    assert hashlib.sha256(b"actual content").hexdigest() in err.message
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("url", ["ftp://example.com/a", "file:///etc/passwd", "gopher://x/", "example.com/a", ""])
def test_unknown_schemes_are_refused(url, tmp_path):
    err = _download_error(url, tmp_path / "x", max_bytes=MB)
    assert "unsupported URL scheme" in err.message


@pytest.mark.parametrize("url", ["http://[::1/x", "https://example.com:99999/x?sig=abcdef123"])
def test_malformed_urls_are_refused(url, tmp_path):
    err = _download_error(url, tmp_path / "x", max_bytes=MB)
    assert "malformed URL" in err.message and "abcdef123" not in str(err)


def test_bad_max_bytes_is_a_programming_error(server, tmp_path):
    with pytest.raises(ValueError):
        download(server.url("/x"), tmp_path / "x", max_bytes=0)


# --- SSRF guard ----------------------------------------------------------------------------------

def _resolve_as(monkeypatch, mapping: dict[str, list[str]]):
    """Make `socket.getaddrinfo` answer listed names with the given addresses (one per call)."""
    real = socket.getaddrinfo

    def fake(host, port, *args, **kwargs):
        if host in mapping:
            answers = mapping[host]
            address = answers.pop(0) if len(answers) > 1 else answers[0]
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            return [(family, socket.SOCK_STREAM, 6, "", (address, port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "[::ffff:127.0.0.1]", "2130706433",
                                  "0.0.0.0", "10.1.2.3", "192.168.1.10", "172.16.0.5", "100.64.1.1",
                                  "224.0.0.1", "169.254.169.254", "[fe80::1]"])
def test_private_addresses_are_refused_when_the_switch_is_off(switch_off, server, tmp_path, host):
    path = f"/ssrf-{len(server.requests)}.bin"
    server.add(path, Route(b"secret internal data"))
    err = _download_error(f"http://{host}:{server.port}{path}", tmp_path / "x", max_bytes=MB)
    assert "refused" in err.message
    assert server.seen(path) == []  # never connected
    assert not list(tmp_path.iterdir())


def test_a_name_resolving_to_a_private_address_is_refused(switch_off, monkeypatch, tmp_path):
    _resolve_as(monkeypatch, {"intranet.example.com": ["10.20.30.40"]})
    err = _download_error("https://intranet.example.com/model.safetensors", tmp_path / "x", max_bytes=MB)
    assert "intranet.example.com resolves to 10.20.30.40, a private or reserved address" in err.message


def test_dns_rebinding_is_caught_at_connect_time(switch_off, monkeypatch, server, tmp_path):
    # First answer (the guard's check) is public, the next one (the connection's) is loopback.
    _resolve_as(monkeypatch, {"rebind.example.com": ["93.184.215.14", "127.0.0.1"]})
    url, path = _route(server, "rebind.bin", b"internal")
    err = _download_error(url.replace("127.0.0.1", "rebind.example.com"), tmp_path / "x", max_bytes=MB)
    assert "connected to 127.0.0.1, a loopback address" in err.message
    assert server.seen(path) == []


def test_each_redirect_hop_is_checked(switch_off, monkeypatch, server, tmp_path):
    # Treat this test server's 127.0.0.1 as if it were a public host; everything else is judged
    # by the real classification.
    real = downloads.address_refusal
    monkeypatch.setattr(downloads, "address_refusal",
                        lambda a, allow: None if a == "127.0.0.1" else real(a, allow))
    url, path = _route(server, "hop.bin", b"", redirect="http://10.0.0.7:8080/internal/admin")
    err = _download_error(url, tmp_path / "x", max_bytes=MB)
    assert "10.0.0.7 resolves to 10.0.0.7, a private or reserved address" in err.message
    assert len(server.seen(path)) == 1


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/iam/security-credentials/",
                                 "http://169.254.170.2/v2/credentials", "http://[fd00:ec2::254]/latest/meta-data/",
                                 "http://100.100.100.200/latest/meta-data/", "http://metadata.google.internal/",
                                 "http://[::ffff:169.254.169.254]/", "http://2852039166/"])
def test_metadata_endpoints_are_refused_even_with_the_switch_on(url, tmp_path):
    assert os.environ.get("ALLOW_PRIVATE_DOWNLOADS") == "1"
    err = _download_error(url, tmp_path / "x", max_bytes=MB, allow_private=True)
    assert "metadata" in err.message


def test_redirect_to_metadata_is_refused_even_with_the_switch_on(server, tmp_path):
    url, path = _route(server, "to-meta", b"", redirect="http://169.254.169.254/latest/api/token")
    err = _download_error(url, tmp_path / "x", max_bytes=MB, allow_private=True)
    assert "169.254.169.254" in err.message and "metadata" in err.message


def test_redirect_loops_and_scheme_changes_are_refused(server, tmp_path):
    loop = server.url("/loop")
    server.add("/loop", Route(redirect=loop))
    err = _download_error(loop, tmp_path / "x", max_bytes=MB)
    assert f"more than {downloads.MAX_REDIRECTS} redirects" in err.message
    assert len(server.seen("/loop")) == downloads.MAX_REDIRECTS + 1
    url, _ = _route(server, "to-file", b"", redirect="file:///etc/passwd")
    err = _download_error(url, tmp_path / "x", max_bytes=MB)
    assert "redirected to an unsupported scheme 'file'" in err.message


def test_relative_redirect_is_followed(server, tmp_path):
    server.add("/files/v2/data.bin", Route(b"moved"))
    url, _ = _route(server, "files/data.bin", b"", redirect="v2/data.bin")
    assert download(url, tmp_path / "d.bin", max_bytes=MB).read_bytes() == b"moved"


def test_error_messages_never_contain_the_query_string(switch_off, server, tmp_path, monkeypatch):
    query = "?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=deadbeefsecretsig&token=tok123456"
    err = _download_error(server.url("/gone.bin") + query, tmp_path / "x", max_bytes=MB)  # refused (loopback)
    assert "deadbeef" not in str(err) and "tok123456" not in str(err)
    monkeypatch.setenv("ALLOW_PRIVATE_DOWNLOADS", "1")
    err = _download_error(server.url("/gone.bin") + query, tmp_path / "x", max_bytes=MB)  # 404
    assert "HTTP 404" in err.message and "/gone.bin" in err.message
    assert "deadbeef" not in str(err) and "tok123456" not in str(err)
    closed = free_port()  # a port nobody listens on: connection refused, retried, then failed
    monkeypatch.setattr(downloads, "RETRIES", 1)
    err = _download_error(f"http://user:pw-secret@127.0.0.1:{closed}/f.bin{query}", tmp_path / "x", max_bytes=MB)
    assert "gave up" in err.message
    for secret in ("deadbeef", "tok123456", "pw-secret", "X-Amz"):
        assert secret not in str(err)


# --- deadlines, trickles, misaligned ranges, redirects (issue 12, item 3) --------------------------

def _in_thread(fn):
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    return worker, errors


def test_stop_ends_a_read_blocked_on_a_dripping_server_within_a_second(server, tmp_path):
    url, path = _route(server, "drip.bin", b"x" * 200, drip=1.0)  # one byte a second: 200 s in all
    stop = threading.Event()
    worker, errors = _in_thread(lambda: download(url, tmp_path / "drip.bin", max_bytes=MB, stop=stop))
    while not server.seen(path):
        time.sleep(0.01)
    time.sleep(0.5)
    stop.set()
    stopped_at = time.monotonic()
    worker.join(timeout=10)
    assert not worker.is_alive(), "the download thread kept reading after stop"
    assert time.monotonic() - stopped_at < 1.5
    assert isinstance(errors[0], JobError) and errors[0].code == "cancelled"


def test_overall_deadline_ends_a_trickling_download_and_keeps_the_partial(server, tmp_path, monkeypatch):
    url, _ = _route(server, "trickle.bin", b"y" * 200, drip=0.2)
    monkeypatch.setenv("DOWNLOAD_TIMEOUT_S", "1.5")
    started = time.monotonic()
    worker, errors = _in_thread(lambda: download(url, tmp_path / "trickle.bin", max_bytes=MB))
    worker.join(timeout=15)
    assert not worker.is_alive() and time.monotonic() - started < 3
    err = errors[0]
    assert isinstance(err, JobError) and err.code == "download_failed"
    assert "took longer than 1.5 s (DOWNLOAD_TIMEOUT_S)" in err.message
    assert 0 < (tmp_path / "trickle.bin.partial").stat().st_size < 200  # kept for a later resume


def test_a_server_that_sends_a_byte_and_drops_uses_up_the_retries(server, tmp_path, monkeypatch):
    url, path = _route(server, "dropper.bin", os.urandom(2000), drop_after=1, drops=10**6)
    monkeypatch.setattr(downloads, "RETRIES", 3)
    err = _download_error(url, tmp_path / "dropper.bin", max_bytes=MB)
    assert "gave up after 3 retries" in err.message
    assert len(server.seen(path)) == 4


def test_a_misaligned_range_reply_is_refused_not_appended(server, tmp_path):
    data = os.urandom(2 * MB)
    url, path = _route(server, "shifted.bin", data, drop_after=MB + 100, misalign=7)
    err = _download_error(url, tmp_path / "shifted.bin", max_bytes=10 * MB)
    assert "misaligned range reply" in err.message
    assert not (tmp_path / "shifted.bin").exists()
    first, second = server.seen(path)
    assert "Range" in second.headers


def test_cross_host_redirect_drops_every_caller_header(server, tmp_path):
    data = b"cdn bytes"
    server.add("/cdn/obj", Route(data))
    url, _ = _route(server, "moved.bin", b"", redirect=server.url("/cdn/obj", host="localhost"))
    caller = {"Authorization": "Bearer abcdefgh12345", "Cookie": "session=s3cr3t", "X-Api-Key": "key-123456",
              "Proxy-Authorization": "Basic cHc6cHc=", "X-Amz-Security-Token": "sts-token-123"}
    assert download(url, tmp_path / "moved.bin", max_bytes=MB, headers=caller).read_bytes() == data
    (first,) = server.seen("/moved.bin")
    assert first.headers["X-Api-Key"] == "key-123456"
    (blob,) = server.seen("/cdn/obj")
    assert not {k.lower() for k in caller} & {k.lower() for k in blob.headers}


@pytest.mark.parametrize("url", [
    "hf://acme/loras/../../api/whoami-v2",
    "hf://acme/loras/%2e%2e/%2E%2E/api/whoami-v2",
    "hf://../../api/whoami-v2/x",
    "hf://datasets/acme/../../../api/whoami-v2",
    "hf://acme/loras?x=1/w.safetensors",
])
def test_hf_paths_cannot_climb_to_other_hub_routes(server, tmp_path, monkeypatch, url):
    monkeypatch.setenv("HF_ENDPOINT", server.url(""))
    monkeypatch.setenv("HF_TOKEN", "hf_TestToken1234567890")
    before = len(server.requests)
    _download_error(url, tmp_path / "x", max_bytes=MB)
    assert len(server.requests) == before  # refused before anything was sent


def test_debug_logs_never_print_a_dataset_urls_signature(server, tmp_path, caplog):
    import logging

    from common.redaction import RedactingFormatter

    url, _ = _route(server, "dataset.zip", b"zip bytes")
    signed = url + "?X-Amz-Credential=AKIDEXAMPLE%2F20261202&X-Amz-Signature=0f1e2d3c4b5a69788796a5b4c3d2e1f0"
    with caplog.at_level(logging.DEBUG):
        download(signed, tmp_path / "dataset.zip", max_bytes=MB)
    lines = "\n".join(RedactingFormatter("%(name)s %(message)s").format(r) for r in caplog.records)
    assert "urllib3" in lines and "/dataset.zip?" in lines  # urllib3 logs the request line at DEBUG
    assert "0f1e2d3c4b5a" not in lines and "AKIDEXAMPLE" not in lines


# --- hf:// and s3:// -----------------------------------------------------------------------------

def test_hf_url_resolves_on_the_endpoint_with_token_dropped_on_cdn_redirect(server, tmp_path, monkeypatch):
    data = os.urandom(MB)
    monkeypatch.setenv("HF_ENDPOINT", server.url(""))
    monkeypatch.setenv("HF_TOKEN", "hf_TestToken1234567890")
    cdn = server.add("/cdn/blob-1", Route(data))
    assert cdn.data == data
    server.add("/acme/loras/resolve/v2/sub/dir/w.safetensors",
               Route(redirect=server.url("/cdn/blob-1", host="localhost")))
    out = download("hf://acme/loras/sub/dir/w.safetensors@v2", tmp_path / "w.safetensors", max_bytes=10 * MB)
    assert out.read_bytes() == data
    (hub,) = server.seen("/acme/loras/resolve/v2/sub/dir/w.safetensors")
    assert hub.headers["authorization"] == "Bearer hf_TestToken1234567890"
    (blob,) = server.seen("/cdn/blob-1")
    assert "authorization" not in blob.headers  # another host: token not forwarded

    server.add("/datasets/acme/faces/resolve/main/images.zip", Route(b"zipbytes"))
    out = download("hf://datasets/acme/faces/images.zip", tmp_path / "d.zip", max_bytes=MB,
                   headers={"Authorization": "Bearer hf_CallerToken12345678"})
    assert out.read_bytes() == b"zipbytes"
    assert server.seen("/datasets/acme/faces/resolve/main/images.zip")[-1].headers["authorization"] == \
        "Bearer hf_CallerToken12345678"


def test_hf_private_dataset_file_from_the_hub_stand_in(hub_server, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub_server.url, token=hub_server.token)
    api.create_repo("tester/private-faces", repo_type="dataset", private=True, exist_ok=True)
    data = os.urandom(200_000)
    api.upload_file(path_or_fileobj=data, path_in_repo="v1/faces.zip", repo_id="tester/private-faces",
                    repo_type="dataset")
    url = "hf://datasets/tester/private-faces/v1/faces.zip"
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
    err = _download_error(url, tmp_path / "f.zip", max_bytes=MB)
    assert "HTTP 401" in err.message and "needs a token" in err.message
    monkeypatch.setenv("HF_TOKEN", hub_server.token)
    out = download(url, tmp_path / "f.zip", max_bytes=MB, sha256=hashlib.sha256(data).hexdigest())
    assert out.read_bytes() == data


def test_malformed_hf_url_is_refused(tmp_path):
    err = _download_error("hf://only-a-repo/name", tmp_path / "x", max_bytes=MB)
    assert "hf://<owner>/<name>/<path in repo>" in err.message


def test_s3_download(s3_server, tmp_path, monkeypatch):
    s3, client = s3_server, s3_server.client()
    data = os.urandom(3 * MB)
    client.put_object(Bucket=s3.bucket, Key="inputs/data.bin", Body=data)
    monkeypatch.setenv("S3_ENDPOINT_URL", s3.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)
    out = download(f"s3://{s3.bucket}/inputs/data.bin", tmp_path / "data.bin", max_bytes=10 * MB,
                   sha256=hashlib.sha256(data).hexdigest())
    assert out.read_bytes() == data
    # A partial file left by an earlier call is resumed with a ranged GET (progress starts at its size).
    url = f"s3://{s3.bucket}/inputs/data.bin"
    (tmp_path / "again.bin.partial").write_bytes(data[:MB])
    (tmp_path / "again.bin.partial.json").write_text(json.dumps({"identity": downloads._identity(url)}))
    seen = []
    out = download(url, tmp_path / "again.bin", max_bytes=10 * MB, progress=lambda d, t: seen.append((d, t)))
    assert out.read_bytes() == data and seen[0] == (MB, 3 * MB)
    err = _download_error(f"s3://{s3.bucket}/inputs/missing.bin", tmp_path / "m.bin", max_bytes=MB)
    assert "NoSuchKey" in err.message or "404" in err.message
    err = _download_error(f"s3://{s3.bucket}/inputs/data.bin", tmp_path / "small.bin", max_bytes=MB)
    assert "over the limit" in err.message
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value-123")
    err = _download_error(url, tmp_path / "denied.bin", max_bytes=10 * MB)
    assert "SignatureDoesNotMatch" in err.message and "wrong-secret-value-123" not in str(err)
