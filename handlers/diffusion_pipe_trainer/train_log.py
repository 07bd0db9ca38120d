"""Reading diffusion-pipe's log: progress (epoch, step, loss, percent, ETA) and failure hints.

The engine never prints its total step count. It is computed up front from the dataset's
buckets as the engine cuts them (buckets.py) and replaced by the measured value when the log
says `Started new epoch: 2`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

STEP = re.compile(r"^steps: (\d+) loss: (\S+) .*iter time \(s\): ([\d.]+)")
# tdrussell/diffusion-pipe at 8f83dbf: utils/saver.py:143, :112; train.py:891, :974 (COMPLETE)
NEW_EPOCH = re.compile(r"Started new epoch: (\d+)")
SAVED = re.compile(r"Saving model to directory (\S+)")
RESUMED = re.compile(r"Resuming training from checkpoint\. Resuming at epoch: (\d+), step: (\d+)")
# utils/dataset.py:395-396 (DeepSpeed's logger, so with a "[... WARNING] [dataset.py:396:...]" prefix)
DROPPED = re.compile(r"size bucket (.+) is being completely dropped")
CACHING = re.compile(r"^caching (latents|text embeddings)")
COMPLETE = "TRAINING COMPLETE!"

# Log text -> what to tell the caller. The engine's own messages, in tdrussell/diffusion-pipe at 8f83dbf:
# models/wan/wan.py:291-292 (i2v/flf2v), utils/dataset.py:673 (no images/videos), :814/:820 (too short),
# :1306 (empty), models/wan/attention.py:107 (flash-attn); the others are PyTorch's, DeepSpeed's and the OS's.
HINTS = (
    ("CUDA out of memory", "the GPU ran out of memory: lower training.resolution or frame_buckets, set "
                           "transformer_dtype='float8', raise blocks_to_swap, or use a bigger GPU"),
    ("OutOfMemoryError", "the GPU ran out of memory: lower training.resolution or frame_buckets, set "
                         "transformer_dtype='float8', raise blocks_to_swap, or use a bigger GPU"),
    ("return code = -9", "the training process was killed (host out of memory): use a worker with more RAM"),
    ("return code = -11", "the training process crashed with a segmentation fault"),
    ("Address already in use", "the DeepSpeed port is taken by another run on this machine"),
    ("i2v/flf2v must train on videos", "wan14b_i2v trains on videos only"),
    ("had no images/videos", "a dataset folder had no usable media (media without captions are skipped)"),
    ("is being skipped because it is too short", "some videos are shorter than the smallest frame bucket"),
    ("No CUDA GPUs are available", "no GPU is visible to the worker"),
    ("Processed dataset was empty", "every bucket is smaller than the global batch (micro batch x gradient "
                                    "accumulation x GPUs), so the engine dropped them all: lower the batch or "
                                    "raise the repeats"),
    ("FLASH_ATTN_2_AVAILABLE", "flash-attn is not installed in the image, and Wan needs it"),
)


def hint_for(lines: list[str]) -> str | None:
    text = "\n".join(lines)
    for needle, hint in HINTS:
        if needle in text:
            return hint
    return None


@dataclass
class TrainProgress:
    """State parsed from the log so far; `feed(line)` returns True when something changed."""

    epochs: int
    steps_per_epoch: int
    max_steps: int | None = None
    epoch: int = 1
    step: int = 0
    loss: float | None = None
    phase: str = "starting"
    saved: list[str] = field(default_factory=list)
    completed: bool = False
    first_line_at: float | None = None
    dropped_buckets: list[str] = field(default_factory=list)  # as the engine logged them
    _first_step: int | None = None
    _first_step_at: float | None = None
    _calibrated: bool = False

    @property
    def total_steps(self) -> int:
        total = self.steps_per_epoch * self.epochs
        return min(total, self.max_steps) if self.max_steps else total

    def feed(self, line: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        if self.first_line_at is None and line.strip():
            self.first_line_at = now
        if m := STEP.match(line):
            self.step = int(m.group(1))
            try:
                self.loss = float(m.group(2))
            except ValueError:
                self.loss = None
            if self._first_step is None:
                self._first_step, self._first_step_at = self.step, now
            self.phase = "training"
            return True
        if m := NEW_EPOCH.search(line):
            self.epoch = int(m.group(1))
            if self.epoch == 2 and not self._calibrated and self.step > 0:
                self.steps_per_epoch = self.step  # measured: every step so far was epoch 1
                self._calibrated = True
            return True
        if m := SAVED.search(line):
            self.saved.append(m.group(1))
            return True
        if m := RESUMED.search(line):
            self.epoch, self.step = int(m.group(1)), int(m.group(2)) - 1
            return True
        if m := DROPPED.search(line):
            self.dropped_buckets.append(m.group(1))
            return True
        if CACHING.match(line):
            self.phase = "caching"
            return True
        if COMPLETE in line:
            self.completed = True
            return True
        return False

    def percent(self) -> float:
        return 100.0 * min(self.step, self.total_steps) / self.total_steps

    def eta_s(self, now: float | None = None) -> float | None:
        now = time.monotonic() if now is None else now
        if self._first_step is None or self.step <= self._first_step:
            return None
        per_step = (now - self._first_step_at) / (self.step - self._first_step)
        return max(0.0, (self.total_steps - self.step) * per_step)

    def report(self) -> dict:
        eta = self.eta_s()
        out = {"epoch": self.epoch, "epochs": self.epochs, "step": self.step, "total_steps": self.total_steps,
               "loss": self.loss, "eta_s": round(eta, 1) if eta is not None else None}
        if self.saved:
            out["latest_saved"] = self.saved[-1]
        return out
