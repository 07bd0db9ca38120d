"""diffusion-pipe-trainer demo: a dry-run job over a tiny dataset served on 127.0.0.1.

    python -m scripts.demo_trainer [--models DIR] [--out DIR]     run the dry-run job, print the configs
    python -m scripts.demo_trainer --serve [--port 8765]          only serve the tiny dataset (for
                                                                  test_inputs/diffusion-pipe-trainer/test_input.json)

The job goes through the real handler: download + safe extraction of the zip, flattening,
JoyCaption captions for the uncaptioned images (the tiny random-weight model, so the words
are random), trigger word, config.toml + dataset.toml. No model weights are fetched and
nothing is trained (dry_run); diffusion-pipe itself needs a GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DATASET_NAME = "tiny_dataset.zip"


def tiny_dataset(captioned: bool = False) -> bytes:
    """A zip with 4 small images in nested folders; 1 captioned (or all, for `precaptioned`)."""
    from PIL import Image

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, (folder, color) in enumerate([("portraits", (200, 80, 60)), ("portraits", (60, 80, 200)),
                                             ("outdoor", (60, 180, 60)), ("outdoor/beach", (230, 210, 150))]):
            img = io.BytesIO()
            Image.new("RGB", (48 + 8 * i, 40), color).save(img, format="PNG")
            zf.writestr(f"my_dataset/{folder}/photo_{i % 2}.png", img.getvalue())
            if captioned or i == 0:
                zf.writestr(f"my_dataset/{folder}/photo_{i % 2}.txt", f"a photo in {folder.replace('/', ' ')}")
        zf.writestr("__MACOSX/my_dataset/._photo_0.png", b"resource fork")
    return buf.getvalue()


def serve(root: Path, port: int = 0) -> ThreadingHTTPServer:
    quiet = type("Quiet", (SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
    handler = partial(quiet, directory=str(root))
    httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def main(models_dir: Path, out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    www = out_dir / "www"
    www.mkdir(exist_ok=True)
    (www / DATASET_NAME).write_bytes(tiny_dataset())
    httpd = serve(www)
    os.environ["ALLOW_PRIVATE_DOWNLOADS"] = "1"  # the dataset is served on 127.0.0.1
    os.environ["DIFFUSION_PIPE_WORKING_DIR"] = str((out_dir / "work").resolve())
    os.environ["DIFFUSION_PIPE_MODELS_DIR"] = str(Path(models_dir).resolve())
    os.environ.setdefault("JOYCAPTION_SEED", "0")
    from handlers.diffusion_pipe_trainer.handler import handler

    job = {"id": "demo-dry-run", "input": {
        "model_type": "wan13",
        "dataset": {"type": "images", "images_url": f"http://127.0.0.1:{httpd.server_address[1]}/{DATASET_NAME}",
                    "trigger_word": "ohwx", "image_repeats": 2},
        "training": {"epochs": 20, "lora_rank": 16, "save_every_n_epochs": 5, "lr_scheduler": "cosine"},
        "caption": {"max_new_tokens": 12},
        "dry_run": True,
    }}
    try:
        result = asyncio.run(handler(job))
    finally:
        httpd.shutdown()
    if "error" in result:
        raise SystemExit(f"dry run failed: {result['error']}")
    configs_dir = out_dir / "configs"
    configs_dir.mkdir(exist_ok=True)
    for name, text in result["configs"].items():
        (configs_dir / name).write_text(text)
        print(f"--- {name} ---\n{text}")
    images = Path(os.environ["DIFFUSION_PIPE_WORKING_DIR"]) / "jobs" / "demo-dry-run" / "dataset" / "images"
    print("--- captions (tiny random model: random words) ---")
    for txt in sorted(images.glob("*.txt")):
        print(f"{txt.name}: {txt.read_text().strip()}")
    summary = {k: result[k] for k in ("status", "model_name", "dataset", "estimated_total_steps", "command",
                                      "timings")}
    print("--- result ---\n" + json.dumps(summary, indent=2))
    (out_dir / "dry_run_result.json").write_text(json.dumps(result, indent=2))
    return result


def _cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path(".cache/tiny-models/diffusion-pipe-trainer"))
    parser.add_argument("--out", type=Path, default=Path("outputs/diffusion-pipe-trainer"))
    parser.add_argument("--serve", action="store_true", help="only serve the precaptioned tiny dataset")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    if args.serve:
        www = args.out / "www"
        www.mkdir(parents=True, exist_ok=True)
        (www / DATASET_NAME).write_bytes(tiny_dataset(captioned=True))
        httpd = serve(www, args.port)
        print(f"serving http://127.0.0.1:{args.port}/{DATASET_NAME} (Ctrl-C to stop)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            httpd.shutdown()
        return
    if not (args.models / "llama-joycaption-beta-one-hf-llava" / ".complete").exists():
        from scripts.tiny_models.trainer import build

        build(args.models)
    main(args.models, args.out)


if __name__ == "__main__":
    _cli()
