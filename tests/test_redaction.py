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
