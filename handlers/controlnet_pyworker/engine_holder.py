"""The process's one `Engine`, built on first use (that imports torch and diffusers), shared by
the RunPod handler and the model server."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from handlers.controlnet_pyworker.settings import Settings

if TYPE_CHECKING:
    from handlers.controlnet_pyworker.engine import Engine
    from handlers.controlnet_pyworker.manifest import Manifest


class EngineHolder:
    def __init__(self, settings: Settings | None = None, manifest: Manifest | None = None) -> None:
        """`settings` and `manifest` default to the environment's, read when the engine is built."""
        self.settings = settings
        self.manifest = manifest
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    def get(self) -> Engine:
        with self._lock:
            if self._engine is None:
                from handlers.controlnet_pyworker import manifest
                from handlers.controlnet_pyworker.engine import Engine

                settings = self.settings or Settings.from_env()
                m = self.manifest or manifest.load(settings=settings)
                self._engine = Engine(m, settings.models_dir, settings=settings)
            return self._engine

    @property
    def current(self) -> Engine | None:
        """The engine if it was built, without building it."""
        return self._engine
