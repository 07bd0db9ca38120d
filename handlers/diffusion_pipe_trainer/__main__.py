"""RunPod entry point: `python -m handlers.diffusion_pipe_trainer` (also `--test_input '<json>'`)."""

import runpod

from common.redaction import configure_logging
from handlers.diffusion_pipe_trainer.handler import handler

if __name__ == "__main__":
    configure_logging()
    runpod.serverless.start({"handler": handler})
