"""The trainer's settings: one typed object from the environment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from handlers.diffusion_pipe_trainer.settings import TrainerSettings


def test_settings_read_the_environment_with_their_aliases():
    s = TrainerSettings.from_env({"DIFFUSION_PIPE_LAUNCHER": "python3 /x/fake.py", "TRAINER_PASS_ENV": "A, B,",
                                  "GOOGLE_API_KEY": "AIza-g", "HUGGING_FACE_HUB_TOKEN": "hf_h", "TRAINER_NUM_GPUS": "2",
                                  "JOYCAPTION_SEED": " ", "UNRELATED": "x"})
    assert s.launcher == ["python3", "/x/fake.py"] and s.pass_env == ["A", "B"] and s.num_gpus == 2
    assert s.secret("gemini_api_key") == "AIza-g" and s.secret("hf_token") == "hf_h" and s.joycaption_seed is None
    assert "hf_h" not in repr(s) and "AIza-g" not in repr(s)  # secrets never in a printed settings object
    d = TrainerSettings.from_env({})
    assert (d.timeout_s, d.kill_grace_s, d.gemini_model, d.launcher) == (86400, 10, "gemini-3.5-flash", ["deepspeed"])


@pytest.mark.parametrize("env, message", [
    ({"TRAINER_NUM_GPUS": "two"}, "environment variable TRAINER_NUM_GPUS: Input should be a valid integer"),
    ({"TRAINER_NUM_GPUS": "0"}, "environment variable TRAINER_NUM_GPUS: Input should be greater than or equal to 1"),
    ({"TRAINING_TIMEOUT_S": "-5"}, "environment variable TRAINING_TIMEOUT_S: Input should be greater than 0"),
])
def test_a_bad_setting_names_the_variable(env, message):
    with pytest.raises(ValueError) as info:
        TrainerSettings.from_env(env)
    assert str(info.value).startswith(message)


def test_worker_refuses_to_start_with_a_bad_setting():
    proc = subprocess.run([sys.executable, "-m", "handlers.diffusion_pipe_trainer"], capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
                                            "TRAINER_KILL_GRACE_S": "soon"})
    assert proc.returncode != 0 and "environment variable TRAINER_KILL_GRACE_S" in proc.stderr


def test_settings_are_read_in_one_place():
    package = Path(__file__).resolve().parents[1] / "handlers" / "diffusion_pipe_trainer"
    reads = {p.name: [line.strip() for line in p.read_text().splitlines() if "os.environ" in line]
             for p in package.glob("*.py") if p.name != "settings.py"}
    # CUDA's own variable stays CUDA's; the children's environment is built from the worker's
    assert {name: lines for name, lines in reads.items() if lines} == {
        "gpus.py": ['cvd = os.environ.get("CUDA_VISIBLE_DEVICES")']}
