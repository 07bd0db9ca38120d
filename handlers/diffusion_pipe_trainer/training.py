"""Running diffusion-pipe as a child process group, with progress, a time limit and cancellation.

    deepspeed --include=localhost:0,1 --master_port=P train.py --deepspeed --config <job>/config/config.toml
        --master_port=P [--resume_from_checkpoint]

runs in `DIFFUSION_PIPE_DIR`. `--include` rather than `--num_gpus`: the launcher ignores
CUDA_VISIBLE_DEVICES once `--num_gpus` is given (gpus.py). The port goes to train.py as well:
it has its own `--master_port` (default 29500) and sets MASTER_PORT from it, overriding the
launcher's (diffusion-pipe train.py:54, 252-253), so without it concurrent runs collide. The launcher is `DIFFUSION_PIPE_LAUNCHER` (default `deepspeed`;
tests point it at tests/fakes/diffusion_pipe_train.py). The child gets its own session, so a
timeout or a cancelled job ends the launcher *and* its training process (which would otherwise
keep the GPU and the DeepSpeed port).
"""

from __future__ import annotations

import asyncio
import logging
import shlex
from collections import deque
from collections.abc import Callable
from pathlib import Path

from common import processes
from common.jobs import JobError
from common.redaction import redact_text
from handlers.diffusion_pipe_trainer import settings
from handlers.diffusion_pipe_trainer.gpus import p2p_ok
from handlers.diffusion_pipe_trainer.train_log import TrainProgress, hint_for

log = logging.getLogger("trainer.engine")
TAIL_LINES = 40


def engine_dir() -> Path:
    return settings.current().engine_dir


def command(config: Path, *, resume: bool, gpu_ids: list[int], master_port: int) -> list[str]:
    launcher = settings.current().launcher
    cmd = [*launcher, f"--include=localhost:{','.join(map(str, gpu_ids))}", f"--master_port={master_port}",
           "train.py", "--deepspeed", "--config", str(config), f"--master_port={master_port}"]
    if resume:
        cmd.append("--resume_from_checkpoint")
    return cmd


def child_env(gpu_ids: list[int]) -> dict[str, str]:
    """The worker's environment without its secrets (`TRAINER_PASS_ENV` names any the engine needs) and
    the NCCL/PyTorch settings one node wants."""
    env = processes.child_env(settings.current().pass_env)
    if len(gpu_ids) > 1 and not p2p_ok(gpu_ids):
        env.setdefault("NCCL_P2P_DISABLE", "1")  # PCIe GPUs without P2P hang NCCL; NVLink pods keep P2P
    env.setdefault("NCCL_IB_DISABLE", "1")  # one node: no InfiniBand
    env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def run(cmd: list[str], *, gpu_ids: list[int], progress: TrainProgress, log_file: Path,
              on_update: Callable[[TrainProgress], None], timeout_s: float | None = None,
              on_first_line: Callable[[], None] | None = None) -> TrainProgress:
    """Run `cmd` (from `command`) to the end; raises JobError on a non-zero exit, a timeout or a missing engine."""
    cwd = engine_dir()
    if not (cwd / "train.py").is_file():
        raise JobError("engine_failed", f"diffusion-pipe not found: {cwd}/train.py is missing (DIFFUSION_PIPE_DIR)")
    log.info("starting diffusion-pipe: %s (cwd %s)", shlex.join(cmd), cwd)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    try:
        proc = await processes.spawn(cmd, cwd=cwd, env=child_env(gpu_ids))
    except OSError as exc:
        raise JobError("engine_failed", f"could not start the DeepSpeed launcher: {exc}") from None
    first = True

    def on_line(line: str, _cut: bool) -> None:
        nonlocal first
        if not line:
            return
        if first and on_first_line:
            on_first_line()
            first = False
        tail.append(line)
        if progress.feed(line):
            on_update(progress)

    async def read_all() -> int:
        assert proc.stdout
        # tqdm redraws with \r: a line end, so its bars do not pile up into one line
        with open(log_file, "ab") as logf:
            await processes.pump(proc.stdout, processes.LineSplitter(on_line, carriage_returns=True), raw=logf)
        return await proc.wait()

    try:
        rc = await asyncio.wait_for(read_all(), timeout=timeout_s)
    except asyncio.TimeoutError:
        await processes.stop(proc, settings.current().kill_grace_s)
        raise JobError("timeout", f"training ran past the job's time limit of {timeout_s:g} s and was stopped at "
                                  f"epoch {progress.epoch}, step {progress.step}; saved: "
                                  f"{', '.join(progress.saved) or 'nothing yet'} (checkpoints stay on the volume; "
                                  "send 'resume' with this job id to continue)",
                       [redact_text(x) for x in tail][-10:]) from None
    except BaseException:  # cancelled: end the whole group before letting the cancellation through
        await asyncio.shield(asyncio.to_thread(processes.kill_group, proc.pid, settings.current().kill_grace_s))
        raise
    if rc != 0:
        lines = [redact_text(x) for x in tail]
        hint = hint_for(lines)
        raise JobError("engine_failed", f"diffusion-pipe exited with code {rc}" + (f": {hint}" if hint else ""),
                       lines)
    return progress
