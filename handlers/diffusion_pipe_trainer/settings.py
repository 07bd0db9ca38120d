"""The trainer's settings, all from the environment, read in one place.

`TrainerSettings.from_env()` reads them per call (cheap), so a test or an operator changing the
environment is seen by the next job. A bad value is a ValueError naming the variable. The
environment table of docs/diffusion-pipe-trainer.md is generated from these fields
(`python -m scripts.gen_docs`).
"""

from __future__ import annotations

import os
import shlex
import tempfile
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationError

from common.volumes import volume_root

WORKING_FOLDER = "diffusion_pipe_working_folder"
DEFAULT_GEMINI_MODEL = "gemini-3.5-flash"


def _env(*names: str, shown: str | None = None) -> dict[str, Any]:
    """Field options for a variable (the first name; the others are read when it is unset) and, for the
    docs, the default in words when it is not a plain value."""
    extra: dict[str, Any] = {"env": list(names)}
    if shown is not None:
        extra["shown_default"] = shown
    return {"validation_alias": AliasChoices(*names), "json_schema_extra": extra}


def _csv(value: Any) -> Any:
    return [n.strip() for n in value.split(",") if n.strip()] if isinstance(value, str) else value


def _argv(value: Any) -> Any:
    return shlex.split(value) if isinstance(value, str) else value


class TrainerSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    working_dir: Path | None = Field(None, description="the volume layout root", **_env(
        "DIFFUSION_PIPE_WORKING_DIR", shown=f"`{WORKING_FOLDER}` on the volume (`VOLUME_DIR`, `/runpod-volume`, "
                                            "a mounted `/workspace`), else in the temp dir"))
    models_dir: Path | None = Field(None, description="shared model weights",
                                    **_env("DIFFUSION_PIPE_MODELS_DIR", shown="`$DIFFUSION_PIPE_WORKING_DIR/models`"))
    engine_dir: Path = Field(Path("/diffusion-pipe"), description="the engine checkout", **_env("DIFFUSION_PIPE_DIR"))
    launcher: Annotated[list[str], BeforeValidator(_argv)] = Field(
        ["deepspeed"], description="the launcher command (e.g. `/opt/engine-venv/bin/deepspeed` for an engine "
                                   "venv of its own)", **_env("DIFFUSION_PIPE_LAUNCHER"))
    num_gpus: int | None = Field(None, ge=1, description="train on the first N visible GPUs only",
                                 **_env("TRAINER_NUM_GPUS", shown="every visible GPU"))
    host_ram_gb: float | None = Field(None, gt=0, description="host RAM the multi-GPU check counts on", **_env(
        "TRAINER_HOST_RAM_GB", shown="the container's RAM (cgroup limit or MemTotal)"))
    timeout_s: float = Field(24 * 3600.0, gt=0, description="default `timeout_s` of a job (24 h: RunPod's job TTL)",
                             **_env("TRAINING_TIMEOUT_S"))
    progress_interval_s: float = Field(10.0, ge=0, description="seconds between progress updates",
                                       **_env("TRAINER_PROGRESS_INTERVAL_S"))
    kill_grace_s: float = Field(10.0, ge=0, description="seconds between SIGTERM and SIGKILL when the engine or "
                                                        "JoyCaption is stopped", **_env("TRAINER_KILL_GRACE_S"))
    pass_env: Annotated[list[str], BeforeValidator(_csv)] = Field(
        [], description="comma-separated secret variables the engine and JoyCaption still get (they get no "
                        "keys, tokens or passwords of the worker otherwise)", **_env("TRAINER_PASS_ENV", shown="none"))
    max_dataset_bytes: int = Field(50 * 1024**3, gt=0, description="cap on a dataset download (its extraction: 4x)",
                                   **_env("TRAINER_MAX_DATASET_BYTES", shown="50 GiB"))
    max_dataset_files: int = Field(100_000, gt=0, description="cap on the files of an extracted dataset",
                                   **_env("TRAINER_MAX_DATASET_FILES"))
    model_lock_timeout_s: float = Field(6 * 3600.0, gt=0, description="how long a job waits for another worker "
                                        "downloading the same weights", **_env("TRAINER_MODEL_LOCK_TIMEOUT_S"))
    hf_token: SecretStr | None = Field(None, description="gated weights (FLUX.1-dev), Hub uploads (a job's "
                                       "`api_keys.huggingface_token` wins)", **_env("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"))
    hf_endpoint: str | None = Field(None, description="the Hugging Face Hub to use", **_env(
        "HF_ENDPOINT", shown="https://huggingface.co"))
    hf_updates_interval_s: float = Field(120.0, ge=0, description="seconds between `UPDATES/` commits with Hugging "
                                         "Face output", **_env("HF_UPDATES_INTERVAL_S"))
    joycaption_batch_size: int = Field(4, ge=1, description="images per JoyCaption batch",
                                       **_env("JOYCAPTION_BATCH_SIZE"))
    joycaption_seed: int | None = Field(None, description="seed of JoyCaption's sampling (reproducible captions)",
                                        **_env("JOYCAPTION_SEED", shown="none"))
    gemini_api_key: SecretStr | None = Field(None, description="video captions (a job's `api_keys.gemini_api_key` "
                                             "wins)", **_env("GEMINI_API_KEY", "GOOGLE_API_KEY"))
    gemini_model: str = Field(DEFAULT_GEMINI_MODEL, description="Gemini model for video captions (Google retires "
                              "names every few months)", **_env("GEMINI_MODEL"))
    gemini_base_url: str | None = Field(None, description="Gemini API base URL", **_env(
        "GEMINI_BASE_URL", "GOOGLE_GEMINI_BASE_URL", shown="Google's"))
    gemini_api_version: str | None = Field(None, description="Gemini API version",
                                           **_env("GEMINI_API_VERSION", shown="the client's"))
    gemini_timeout_s: float = Field(300.0, gt=0, description="timeout of one Gemini call",
                                    **_env("GEMINI_TIMEOUT_S"))
    gemini_poll_s: float = Field(2.0, ge=0, description="seconds between checks of an uploaded clip's processing",
                                 **_env("GEMINI_POLL_S"))
    gemini_retry_attempts: int = Field(6, ge=1, description="attempts of a Gemini call (429 and 5xx are retried)",
                                       **_env("GEMINI_RETRY_ATTEMPTS"))
    gemini_retry_initial_delay_s: float = Field(2.0, ge=0, description="first wait between Gemini attempts",
                                                **_env("GEMINI_RETRY_INITIAL_DELAY_S"))
    gemini_retry_jitter_s: float = Field(1.0, ge=0, description="random extra wait between Gemini attempts",
                                         **_env("GEMINI_RETRY_JITTER_S"))

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> TrainerSettings:
        env = os.environ if environ is None else environ
        try:
            return cls.model_validate({k: v for k, v in env.items() if v.strip()})
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ValueError(f"environment variable {first['loc'][0]}: {first['msg']}") from None

    def working_root(self) -> Path:
        return self.working_dir or (volume_root() or Path(tempfile.gettempdir())) / WORKING_FOLDER

    def secret(self, name: str) -> str | None:
        value = getattr(self, name)
        return value.get_secret_value() if value is not None else None


def current() -> TrainerSettings:
    """The settings as the environment holds them now."""
    return TrainerSettings.from_env()
