"""RunPod entry point: `python -m handlers.diffusion_pipe_trainer` (also `--test_input '<json>'`)."""

from common import runpod_entry
from handlers.diffusion_pipe_trainer import settings
from handlers.diffusion_pipe_trainer.handler import handler

if __name__ == "__main__":
    settings.current()  # a bad setting stops the worker now, naming the variable, not each job later
    runpod_entry.start(handler)
