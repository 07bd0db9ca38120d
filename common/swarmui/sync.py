"""A blocking wrapper around `SwarmUIClient` for command-line tools.

It owns a private event loop, so it must not be used from inside a running loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.swarmui.client import GenerationResult, ModelListing, SwarmUIClient
from common.swarmui.params import T2IParams


class SyncSwarmUIClient:
    """Same methods as `SwarmUIClient`, blocking. Use as a context manager or call `close()`."""

    def __init__(self, base_url: str, **kwargs: Any):
        self._loop = asyncio.new_event_loop()
        self._client = SwarmUIClient(base_url, **kwargs)

    def __enter__(self) -> SyncSwarmUIClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, coro: Any) -> Any:
        task = self._loop.create_task(coro)
        try:
            return self._loop.run_until_complete(task)
        except KeyboardInterrupt:  # Ctrl-C: cancel the call and let it clean up (e.g. interrupt its generation)
            task.cancel()
            try:
                self._loop.run_until_complete(task)
            except BaseException:  # the cancellation, or the call's own error: both expected here
                pass
            raise

    def close(self) -> None:
        if not self._loop.is_closed():
            self._run(self._client.close())
            self._loop.close()

    @property
    def server_info(self) -> dict[str, Any]:
        return self._client.server_info

    def session_id(self, *, renew: bool = False) -> str:
        return self._run(self._client.session_id(renew=renew))

    def call(self, route: str, body: dict[str, Any] | None = None, *, timeout: float | None = None) -> dict:
        return self._run(self._client.call(route, body, timeout=timeout))

    def list_models(self, subtype: str = "Stable-Diffusion", **kwargs: Any) -> ModelListing:
        return self._run(self._client.list_models(subtype, **kwargs))

    def current_status(self) -> dict:
        return self._run(self._client.current_status())

    def global_status(self) -> dict:
        return self._run(self._client.global_status())

    def list_backends(self, *, full_data: bool = False) -> dict:
        return self._run(self._client.list_backends(full_data=full_data))

    def select_model(self, model: str, *, timeout: float | None = None) -> dict:
        return self._run(self._client.select_model(model, timeout=timeout))

    def interrupt_all(self) -> dict:
        return self._run(self._client.interrupt_all())

    def generate(self, params: T2IParams | Mapping[str, Any], **kwargs: Any) -> GenerationResult:
        return self._run(self._client.generate(params, **kwargs))

    def read_output(self, ref: str) -> bytes:
        return self._run(self._client.read_output(ref))

    def save_output(self, ref: str, dest_dir: Path, *, index: int = 0) -> Path:
        return self._run(self._client.save_output(ref, dest_dir, index=index))
