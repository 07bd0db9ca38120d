"""controlnet-pyworker's settings: one typed object read from the environment, the only place the
image's Python code reads a variable, and the source of the docs' environment table."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from handlers.controlnet_pyworker.settings import Settings, env_table
from tests.controlnet_fixtures import REPO


def test_from_env_parses_each_variable_and_defaults_the_rest():
    s = Settings.from_env({"MODELS_DIR": "/vol/models", "MODEL_SERVER_PORT": "6001", "REQUIRE_CUDA": "yes",
                           "ENABLE_XFORMERS": "0", "PRELOAD_MODEL": "", "MAX_IMAGE_B64_BYTES": "1000"})
    assert (s.models_dir, s.port, s.require_cuda, s.enable_xformers) == (Path("/vol/models"), 6001, True, False)
    assert s.preload is None and s.preload_variant("lightning") == "lightning"
    assert s.body_limit == 1000 + 1024 * 1024 and s.max_queue == 8 and s.log_level == "info"
    assert Settings.from_env({"PRELOAD_MODEL": "None"}).preload_variant("lightning") is None


@pytest.mark.parametrize("name, value", [("MODEL_SERVER_PORT", "http"), ("REQUIRE_CUDA", "maybe"),
                                         ("PROGRESS_INTERVAL", "soon")])
def test_a_bad_value_names_its_variable(name, value):
    with pytest.raises(ValueError, match=f"environment variable {name}: .*{value!r}"):
        Settings.from_env({name: value})


def test_no_other_module_of_the_image_reads_the_environment():
    readers = [p.name for p in (REPO / "handlers/controlnet_pyworker").glob("*.py")
               if p.name != "settings.py" and re.search(r"os\.environ|getenv\(", p.read_text())]
    assert readers == []


def test_start_sh_takes_its_paths_from_the_settings(tmp_path):
    out = subprocess.run([sys.executable, "-m", "handlers.controlnet_pyworker.settings", "MODEL_LOG", "MODELS_DIR"],
                         cwd=REPO, env={"PYTHONPATH": str(REPO), "MODEL_LOG": str(tmp_path / "a b.log"),
                                                 "MAX_QUEUE": "many"},  # the server's to report, not start.sh's
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"MODEL_LOG='{tmp_path / 'a b.log'}'", "MODELS_DIR=/workspace/models"]
    start = (REPO / "images/controlnet-pyworker/start.sh").read_text()
    assert "/workspace/models" not in start and "model_server.log" not in start


def test_every_setting_is_in_the_docs_table():
    table = env_table()
    for name in re.findall(r'setting\(\s*"([A-Z_0-9]+)"', (REPO / "handlers/controlnet_pyworker/settings.py").read_text()):
        assert f"| `{name}` |" in table, name
