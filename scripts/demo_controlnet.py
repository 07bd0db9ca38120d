"""controlnet-pyworker demo: one generation through the RunPod handler on tiny models.

    python -m scripts.demo_controlnet --models DIR [--out outputs/controlnet-pyworker]

DIR is a tiny-model folder from `python -m scripts.make_tiny_models` (its controlnet-pyworker/
subfolder). Writes the generated PNG and the depth map it was conditioned on.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST_INPUT = REPO / "test_inputs" / "controlnet-pyworker" / "test_input.json"


def main(models_dir: Path, out_dir: Path) -> Path:
    os.environ["MODELS_DIR"] = str(models_dir)
    os.environ.pop("MODEL_MANIFEST", None)
    from handlers.controlnet_pyworker import depth
    from handlers.controlnet_pyworker.handler import handler

    job = {"id": "demo", "input": json.loads(TEST_INPUT.read_text())["input"]}
    result = asyncio.run(handler(job))
    if "error" in result:
        raise SystemExit(f"generation failed: {result['error']}")
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"{result['model']}_{result['era'] or 'no-era'}_seed{result['seed']}"
    image = out_dir / f"{name}.png"
    image.write_bytes(base64.b64decode(result["images"][0]))
    depth.mock(result["width"], result["height"]).save(out_dir / f"{name}_depth.png")
    summary = {k: result[k] for k in ("model", "era", "seed", "steps", "cfg", "scheduler", "lora_strength",
                                      "controlnet_strength", "width", "height", "workload", "timings")}
    (out_dir / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"generated {image} ({result['width']}x{result['height']}, {result['steps']} steps, "
          f"{result['scheduler']}, era {result['era']}) in {result['timings']['total']:.2f}s")
    return image


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True, help="tiny controlnet-pyworker models folder")
    parser.add_argument("--out", type=Path, default=Path("outputs/controlnet-pyworker"))
    args = parser.parse_args()
    main(args.models, args.out)
