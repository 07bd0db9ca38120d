"""API keys from the files the platforms' own CLIs keep, when the environment has none."""

from __future__ import annotations

import pytest

from tests.fakes.runpod_api import FakeRunPodAPI
from tests.gpuworker_helpers import run_cli

KEY = "rpa_TESTKEY0123456789abcdef"


@pytest.fixture
def runpod(monkeypatch, tmp_path):
    with FakeRunPodAPI(api_key=KEY) as fake:
        fake.add_endpoint("echo", lambda job: {"output": job["input"]})
        monkeypatch.setenv("RUNPOD_ENDPOINT_BASE_URL", fake.url)
        monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
        monkeypatch.setenv("HOME", str(tmp_path))
        yield fake


@pytest.mark.parametrize("config", [
    f"apikey = '{KEY}'\napiurl = 'https://api.runpod.io/graphql'\n",  # what runpodctl (viper) writes
    f"apiKey = \"{KEY}\"\n",
    f"[default]\napi_key = \"{KEY}\"\n",  # what `runpod config` (the SDK) writes
])
def test_runpod_key_from_the_config_file(capsys, runpod, tmp_path, config):
    (tmp_path / ".runpod").mkdir()
    (tmp_path / ".runpod" / "config.toml").write_text(config)
    r = run_cli(capsys, "runpod", "health", "echo", "--json")
    assert r.code == 0, r.err
    assert "jobs" in r.json and KEY not in r.text
    assert runpod.requests and all(authorized for *_, authorized in runpod.requests)


def test_runpod_without_any_key_says_where_it_looked(capsys, runpod, tmp_path):
    r = run_cli(capsys, "runpod", "health", "echo")
    assert r.code == 2 and "RUNPOD_API_KEY is not set" in r.err and "~/.runpod/config.toml" in r.err
    (tmp_path / ".runpod").mkdir()
    (tmp_path / ".runpod" / "config.toml").write_text("not = [valid")
    assert run_cli(capsys, "runpod", "health", "echo").code == 2
