"""Where a job's files live on the volume. Nothing is shared between jobs except `models/`.

    <root>/models/                                shared weights (locked, atomic downloads)
    <root>/jobs/<job_id>/downloads/               archives as downloaded (deleted after extraction)
    <root>/jobs/<job_id>/dataset/{images,videos}  flat folders the engine scans
    <root>/jobs/<job_id>/config/                  config.toml, dataset.toml, request.json
    <root>/jobs/<job_id>/logs/                    train.log, caption logs
    <root>/training_outputs/<job_id>/<run>/epochN the engine's output (run = its UTC timestamp)

`<root>` is `DIFFUSION_PIPE_WORKING_DIR`, else `diffusion_pipe_working_folder` on the volume
(`common.volumes.volume_root`), else in the local temp dir.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.volumes import safe_job_id
from handlers.diffusion_pipe_trainer import settings


def working_root() -> Path:
    return settings.current().working_root()


def models_dir(root: Path | None = None) -> Path:
    return settings.current().models_dir or (root or working_root()) / "models"


@dataclass(frozen=True)
class JobDirs:
    root: Path
    job_id: str

    @property
    def job(self) -> Path:
        return self.root / "jobs" / self.job_id

    @property
    def downloads(self) -> Path:
        return self.job / "downloads"

    @property
    def dataset(self) -> Path:
        return self.job / "dataset"

    @property
    def images(self) -> Path:
        return self.dataset / "images"

    @property
    def videos(self) -> Path:
        return self.dataset / "videos"

    @property
    def config(self) -> Path:
        return self.job / "config"

    @property
    def logs(self) -> Path:
        return self.job / "logs"

    @property
    def outputs(self) -> Path:
        return self.root / "training_outputs" / self.job_id

    @property
    def models(self) -> Path:
        return models_dir(self.root)

    def create(self) -> JobDirs:
        for d in (self.downloads, self.images, self.videos, self.config, self.logs, self.outputs, self.models):
            d.mkdir(parents=True, exist_ok=True)
        return self


def job_dirs(job_id: str, root: Path | None = None) -> JobDirs:
    return JobDirs(root or working_root(), safe_job_id(job_id))
