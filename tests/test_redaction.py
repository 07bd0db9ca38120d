"""redact(): patterns, key names, registered literals, and the logging formatter."""

import logging

from common.redaction import (
    MASK,
    RedactingFormatter,
    redact,
    redact_text,
    register_env_secrets,
    register_secret,
)


def test_token_patterns_are_masked():
    hf = "hf_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6"
    akia = "AKIA" + "IOSFODNN7EXAMPLE"
    text = f"token {hf} key {akia} header Authorization: Bearer abc.def.ghi123"
    out = redact_text(text)
    assert hf not in out and akia not in out and "abc.def.ghi123" not in out


def test_signed_query_strings_are_masked_but_the_path_is_kept():
    url = "https://b.s3.example.com/jobs/1/out.zip?X-Amz-Algorithm=AWS4&X-Amz-Signature=f00d"
    out = redact_text(f"PUT {url} -> 403")
    assert out == f"PUT https://b.s3.example.com/jobs/1/out.zip?{MASK} -> 403"
    plain = "https://example.com/data.zip?version=2"
    assert redact_text(plain) == plain


def test_key_value_pairs_in_text():
    out = redact_text('{"secret_key": "wJalrXUtnFEMI", password=hunter22 api_key: zzzzzzzz}')
    assert "wJalrXUtnFEMI" not in out and "hunter22" not in out and "zzzzzzzz" not in out


def test_structures_by_key_name_without_touching_harmless_keys():
    data = {
        "api_keys": {"huggingface_token": "abc", "gemini_api_key": "def"},
        "output": {"s3": {"access_key": "AK", "secret_key": "SK", "key_prefix": "loras", "bucket": "b"}},
        "max_new_tokens": 300,
        "headers": [{"Authorization": "Bearer qwerty123"}],
    }
    out = redact(data)
    assert out["api_keys"] == {"huggingface_token": MASK, "gemini_api_key": MASK}
    assert out["output"]["s3"] == {"access_key": MASK, "secret_key": MASK, "key_prefix": "loras", "bucket": "b"}
    assert out["max_new_tokens"] == 300
    assert out["headers"][0]["Authorization"] == MASK
    assert data["api_keys"]["huggingface_token"] == "abc"  # input untouched


def test_registered_literals_anywhere(monkeypatch):
    register_secret("plain-looking-value-42")
    assert redact_text("the value is plain-looking-value-42.") == f"the value is {MASK}."
    monkeypatch.setenv("MY_SERVICE_PASSWORD", "env-secret-xyz")
    register_env_secrets()
    assert "env-secret-xyz" not in redact(["x env-secret-xyz"])[0]


def test_keep_passes_download_links_through():
    url = "https://s3/x.zip?X-Amz-Signature=abc123"
    assert redact({"download_url": url}, keep={"download_url"}) == {"download_url": url}
    assert redact({"download_url": url})["download_url"].endswith(MASK)


def test_formatter_masks_args_and_tracebacks():
    fmt = RedactingFormatter("%(message)s")
    try:
        raise ValueError("token=supersecretvalue")
    except ValueError:
        import sys

        rec = logging.LogRecord("t", logging.ERROR, __file__, 1, "using %s", ("hf_abcdefghijklmnop",), sys.exc_info())
    line = fmt.format(rec)
    assert "hf_abcdefghijklmnop" not in line and "supersecretvalue" not in line and "ValueError" in line


# -- linear time and echo caps (issue 12, item 1) ------------------------------------------------------

_ADVERSARIAL = {
    # each unit, repeated to 1 MB, made the old signed-URL pattern rescan the rest of the text per `?`
    "http": "http://a?",
    "relative": "a?",
    "token": "&token",
    "key": "token :",
}


def test_one_megabyte_of_adversarial_text_is_redacted_in_linear_time():
    """The old pattern took 51 s on 72 KB of "http://a?" and hours on 1 MB; a linear one takes well
    under a second per case. The subprocess timeout is a hang guard, not a benchmark
    (scripts/bench_redaction.py prints the timings)."""
    import subprocess
    import sys

    code = (
        "import sys\nfrom common.redaction import redact_text\n"
        f"for unit in {list(_ADVERSARIAL.values())!r}:\n"
        "    text = unit * (1_000_000 // len(unit)) + ' X-Amz-Signature=1 sig=2'\n"
        "    assert len(redact_text(text)) > 0\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


def test_the_linear_pattern_masks_what_the_old_one_did_and_relative_request_lines():
    cases = [
        ("GET https://h/p?a=1&X-Amz-Signature=ff end", "GET https://h/p?*** end"),
        ("u=https://h/p?sig=abc&x=1", "u=https://h/p?***"),
        ("(https://h/p?X-Goog-Signature=1)", "(https://h/p?***"),
        ("https://h/p?token=abc", "https://h/p?***"),
        ('"GET /data/set.zip?X-Amz-Credential=AK%2F1&X-Amz-Signature=99 HTTP/1.1" 200', '"GET /data/set.zip?***'
         ' HTTP/1.1" 200'),
        ("https://h/a?b=1 https://h/c?AWSAccessKeyId=x&Signature=y", "https://h/a?b=1 https://h/c?***"),
    ]
    for text, expected in cases:
        assert redact_text(text) == expected, text
    harmless = "why? because https://h/p?page=2&mytoken_count=3 is fine"
    assert redact_text(harmless) == harmless


def test_echoed_text_is_capped_after_masking():
    from common import jobs
    from common.redaction import MAX_ECHO_CHARS

    secret = "hf_" + "Z" * 30
    big = "x" * (MAX_ECHO_CHARS - 5) + secret + "y" * 1_000_000
    err = jobs.error_result(jobs.JobError("invalid_input", big, [big] * 500))
    assert len(err["error"]) < MAX_ECHO_CHARS + 100 and "more characters]" in err["error"]
    assert "hf_ZZZ" not in err["error"]  # masked before it was cut, so no half secret shows
    assert len(err["details"]) == jobs.MAX_DETAILS + 1 and err["details"][-1] == "... and 450 more"
    assert max(len(d) for d in err["details"]) < MAX_ECHO_CHARS
    progress = jobs.Progress({"id": "j"}, min_interval=0, send_to_runpod=False)
    progress.update("x", message=big)
    assert len(progress.sent[0]["message"]) < MAX_ECHO_CHARS + 100
    line = RedactingFormatter("%(message)s").format(
        logging.LogRecord("t", logging.INFO, __file__, 1, "%s", (big * 2,), None))
    assert len(line) < 70_000


# -- the secret registry: scoped to the job, bounded, env secrets global (issue 12, item 6) -------------

def test_a_jobs_secrets_do_not_mask_another_jobs_output():
    import asyncio

    from common.jobs import run_job_async

    async def body_a(job, timings):
        entered.set()
        await leave_a.wait()
        return {"echo": "client-a-secret-value"}

    async def body_b(job, timings):
        await entered.wait()
        # client B sends A's secret as an ordinary field: masking it would tell B it is a secret
        return {"echo": job["input"]["text"]}

    async def main():
        nonlocal entered, leave_a
        entered, leave_a = asyncio.Event(), asyncio.Event()
        task_a = asyncio.create_task(run_job_async({"id": "a", "input": {"api_key": "client-a-secret-value"}}, body_a))
        out_b = await run_job_async({"id": "b", "input": {"text": "client-a-secret-value"}}, body_b)
        leave_a.set()
        return await task_a, out_b

    entered = leave_a = None
    out_a, out_b = asyncio.run(main())
    assert out_a["echo"] == MASK
    assert out_b["echo"] == "client-a-secret-value"
    # after the job, its secrets are gone (nothing global grows per request)
    assert redact_text("client-a-secret-value") == "client-a-secret-value"


def test_log_lines_mask_every_running_jobs_secrets_even_from_threads_without_its_context():
    import threading

    from common.redaction import secret_scope

    fmt = RedactingFormatter("%(message)s")
    lines = []
    with secret_scope():
        register_secret("job-scoped-secret-1")
        thread = threading.Thread(target=lambda: lines.append(fmt.format(
            logging.LogRecord("t", logging.INFO, __file__, 1, "got %s", ("job-scoped-secret-1",), None))))
        thread.start()
        thread.join()
        assert redact_text("job-scoped-secret-1") == MASK
    assert lines == [f"got {MASK}"]


def test_registry_is_bounded_and_env_secrets_stay_global(monkeypatch):
    from common import redaction
    from common.redaction import MAX_SECRETS, secret_scope

    monkeypatch.setenv("SOME_API_TOKEN", "env-wide-secret-77")
    with secret_scope():
        register_env_secrets()
        for i in range(100_000):
            register_secret(f"job-secret-{i:06d}")
        assert len(redaction._job.get().view()) == MAX_SECRETS
        assert redact_text("job-secret-099999") == MASK  # newest kept, oldest forgotten
    for i in range(10_000):
        register_secret(f"loose-secret-{i:06d}")
    assert len(redaction._loose.view()) == MAX_SECRETS
    with secret_scope():
        assert redact_text("env-wide-secret-77") == MASK


def test_signature_values_echoed_by_a_storage_server_are_masked():
    from common.redaction import secret_scope

    url = ("https://bucket.example.com/o.zip?X-Amz-Algorithm=AWS4-HMAC-SHA256"
           "&X-Amz-Credential=AKIDEXAMPLE0%2F20261202%2Fus-east-1%2Fs3%2Faws4_request"
           "&X-Amz-Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7")
    body = ("<Error><Code>SignatureDoesNotMatch</Code><SignatureProvided>"
            "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7</SignatureProvided>"
            "<CanonicalRequest>PUT /o.zip X-Amz-Credential=AKIDEXAMPLE0%2F20261202%2Fus-east-1%2Fs3%2Faws4_request"
            "</CanonicalRequest><StringToSign>AKIDEXAMPLE0/20261202/us-east-1/s3/aws4_request</StringToSign></Error>")
    with secret_scope():
        register_secret(url)
        out = redact_text(body)
    assert "5d672d79" not in out and "AKIDEXAMPLE0" not in out and "SignatureDoesNotMatch" in out


def test_a_secret_containing_another_is_masked_whole_across_scopes(monkeypatch):
    from common.redaction import secret_scope

    monkeypatch.setenv("LONG_SERVICE_TOKEN", "prefix12-and-the-rest-of-it")
    register_env_secrets()
    with secret_scope():
        register_secret("prefix12")  # the job's secret is the start of the environment's
        assert redact_text("x prefix12-and-the-rest-of-it y") == f"x {MASK} y"
