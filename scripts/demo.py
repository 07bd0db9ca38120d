"""`make demo`: run each image's main job on CPU with tiny random-weight models.

- controlnet-pyworker: a generation through the RunPod handler, PNG written under outputs/.
- diffusion-pipe-trainer: a dry-run job over a tiny dataset, printing the generated configs.

swarm-worker needs SwarmUI itself, which cannot run on a CPU machine; its behaviour is
covered by the test suite against a SwarmUI stand-in.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from scripts import demo_controlnet, demo_trainer
from scripts.make_tiny_models import build


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path(".cache/tiny-models"),
                        help="where the tiny models are built (reused when present)")
    parser.add_argument("--out", type=Path, default=Path("outputs"))
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    if not (args.models / ".complete").exists():
        print(f"building tiny models in {args.models} ...")
        build(args.models)
        (args.models / ".complete").touch()
    print(f"tiny models ready ({time.perf_counter() - t0:.1f}s)\n")

    print("== controlnet-pyworker ==")
    demo_controlnet.main(args.models / "controlnet-pyworker", args.out / "controlnet-pyworker")
    print("\n== diffusion-pipe-trainer (dry run) ==")
    demo_trainer.main(args.models / "diffusion-pipe-trainer", args.out / "diffusion-pipe-trainer")
    print(f"\ndemo finished in {time.perf_counter() - t0:.1f}s; outputs under {args.out}/")


if __name__ == "__main__":
    main()
