"""Finding the LoRA to deliver in the engine's output tree.

    training_outputs/<job_id>/<run timestamp>/epochN/<lora file>   (stepN/ under max_steps)
    training_outputs/<job_id>/<run timestamp>/global_stepN/         DeepSpeed state: never delivered

A save in progress has a `tmp/` folder inside its epoch dir and is skipped.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

_SAVE_DIR = re.compile(r"^(epoch|step)(\d+)$")


@dataclass(frozen=True)
class SavedLora:
    directory: Path
    file: Path
    kind: str  # "epoch" or "step"
    number: int

    @property
    def name(self) -> str:
        return self.directory.name

    @property
    def epoch(self) -> int:
        return self.number if self.kind == "epoch" else 0


def saved_loras(output_dir: Path, lora_file: str) -> list[SavedLora]:
    found = []
    if not output_dir.is_dir():
        return found
    for run in sorted(p for p in output_dir.iterdir() if p.is_dir()):
        for d in run.iterdir():
            m = _SAVE_DIR.match(d.name)
            if not m or not d.is_dir() or (d / "tmp").exists():
                continue
            f = d / lora_file
            if not f.is_file():
                others = sorted(d.glob("*.safetensors"))
                if not others:
                    continue
                f = others[0]
            found.append(SavedLora(d, f, m.group(1), int(m.group(2))))
    return found


def latest_lora(output_dir: Path, lora_file: str) -> SavedLora | None:
    """The newest save: the latest run first, then the most recently written LoRA in it."""
    loras = saved_loras(output_dir, lora_file)
    if not loras:
        return None
    return max(loras, key=lambda s: (s.directory.parent.name, s.file.stat().st_mtime_ns, s.number))


def clear_interrupted_saves(output_dir: Path) -> list[str]:
    """Remove save dirs a kill left half-written (they still hold `tmp/`). The engine creates `tmp/` with
    exist_ok=False when it saves that epoch again (diffusion-pipe utils/saver.py:61-64), so a resume would crash
    on it; and what is beside it is an incomplete LoRA. Returns the removed dirs' names."""
    removed = []
    if not output_dir.is_dir():
        return removed
    for run in sorted(p for p in output_dir.iterdir() if p.is_dir()):
        for d in sorted(run.iterdir()):
            if _SAVE_DIR.match(d.name) and (d / "tmp").is_dir():
                shutil.rmtree(d)
                removed.append(f"{run.name}/{d.name}")
    return removed
