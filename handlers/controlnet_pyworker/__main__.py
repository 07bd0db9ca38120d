"""RunPod entry: `python -m handlers.controlnet_pyworker` (see `handler.main`)."""

from __future__ import annotations

from handlers.controlnet_pyworker.handler import main

if __name__ == "__main__":
    main()
