"""The swarm worker's `WorkerConfig`: declared fields read by `common.env_settings`, the aliases and
derived values computed in `from_env`, and docs/swarm-worker.md's table generated from the same fields."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from handlers.swarm_worker import config
from handlers.swarm_worker.config import WorkerConfig, env_table, lease_control_port

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def clean_env(monkeypatch):
    for name in [n for n in __import__("os").environ if n.startswith(("SWARM", "VAST_", "RUNPOD_"))]:
        monkeypatch.delenv(name)
    return monkeypatch


def test_declared_fields_parse_and_blank_means_default(clean_env, tmp_path):
    for name, value in {"SWARMUI_IDLE_SECONDS": "30.5", "SWARM_WORKER_CONCURRENCY": "0", "SWARMUI_MAX_RESTARTS": "2",
                        "SWARM_WAKEUP_HOLD": "Duration", "SWARM_TUNNEL": "NONE", "SWARM_PUBLIC_URL": "https://x/",
                        "SWARMUI_HTTP_TIMEOUT": "  ", "SWARM_WORK_DIR": str(tmp_path), "SWARMUI_TLS": "off",
                        "SWARMUI_MODEL_ROOT": f";{tmp_path / 'a'};{tmp_path / 'b'}"}.items():
        clean_env.setenv(name, value)
    cfg = WorkerConfig.from_env()
    assert (cfg.idle_seconds, cfg.concurrency, cfg.max_restarts, cfg.wakeup_hold) == (30.5, 1, 2, "duration")
    assert (cfg.tunnel, cfg.public_url, cfg.http_timeout) == ("none", "https://x", 10)
    assert cfg.model_roots == [tmp_path / "a", tmp_path / "b"] and cfg.model_download_root == tmp_path / "a"
    assert cfg.url_file == tmp_path / "public_url.txt" and cfg.output_dir == tmp_path / "jobs"


@pytest.mark.parametrize("name, value, message", [
    ("SWARMUI_STARTUP_TIMEOUT", "soon", "expected a number"),
    ("SWARMUI_INTERNAL_PORT", "x", "expected a number"),
    ("SWARM_WAKEUP_HOLD", "forever", "expected one of ready, duration"),
    ("SWARMUI_TLS", "on", "expected one of auto, off")])
def test_a_bad_value_names_its_variable(clean_env, name, value, message):
    clean_env.setenv(name, value)
    with pytest.raises(ValueError, match=f"environment variable {name}: {message} \\(got '{value}'\\)"):
        WorkerConfig.from_env()


def test_lease_control_port_is_read_alone(clean_env):
    clean_env.setenv("SWARMUI_IDLE_SECONDS", "bad")  # the vast front reads one variable, not the worker's others
    assert lease_control_port() == 18000
    clean_env.setenv("SWARM_LEASE_CONTROL_PORT", "18123")
    assert lease_control_port() == 18123


def test_every_variable_read_is_in_the_docs_table():
    source = (REPO / "handlers/swarm_worker/config.py").read_text()
    read = set(re.findall(r'(?:_env|environ\.get)\("([A-Z_0-9]+)"', source))
    read |= {n for pair in re.findall(r'_(?:aliased|port)\("([A-Z_]+)", "([A-Z_]+)"', source) for n in pair}
    read |= set(config.TOKEN_VARIABLES)
    table = env_table()
    assert read and [name for name in sorted(read) if f"`{name}`" not in table] == []
    assert "`SWARMUI_PASS_ENV`" in table and "`SWARMUI_TLS`" in table
