"""Benchmark of the diffusion-pipe-trainer wrapper's own time per job stage (CPU, tiny models).

    python -m scripts.bench_trainer [--files 200] [--videos 20]

For a dataset of N images served on 127.0.0.1, each stage is timed next to a baseline that
does the bare minimum of the same work, and the ratio is printed:

- download+extract: `dataset.prepare` (safe download, safe extraction, flattening, caption
  pairing, image checks) vs urllib + `zipfile.extractall`;
- caption (images): JoyCaption child process on the tiny random-weight model, per image, vs the
  same generation in-process (model already loaded) per image;
- caption (videos): Gemini client against the local stand-in, per clip;
- config: building + writing + reading back both TOML files;
- upload: `common.uploads.upload` of a 64 MB LoRA to a local presigned-PUT server vs a bare
  `requests.put` of the same bytes;
- engine start: from "dataset ready" (configs written) to the engine's first log line, through
  `training.run` with the diffusion-pipe stand-in, vs starting the stand-in directly (goal < 2 s).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAKE_ENGINE = ROOT / "tests" / "fakes" / "diffusion_pipe_train.py"


def _zip_of_images(n: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(n):
            img = io.BytesIO()
            Image.new("RGB", (64, 48), (i % 256, (i * 7) % 256, 90)).save(img, format="PNG")
            zf.writestr(f"data/part{i % 5}/img{i}.png", img.getvalue())
            if i % 2 == 0:
                zf.writestr(f"data/part{i % 5}/img{i}.txt", f"caption {i}")
    return buf.getvalue()


class _PutSink(BaseHTTPRequestHandler):
    def log_message(self, *a) -> None:
        pass

    def do_PUT(self) -> None:  # noqa: N802
        n = int(self.headers.get("Content-Length") or 0)
        while n:
            n -= len(self.rfile.read(min(n, 1 << 20)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


def _serve(handler, root: Path | None = None) -> ThreadingHTTPServer:
    from functools import partial
    from http.server import SimpleHTTPRequestHandler

    if handler is None:
        quiet = type("Quiet", (SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
        handler = partial(quiet, directory=str(root))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def _row(name: str, ours: float, base: float, unit: str = "s") -> None:
    ratio = ours / base if base > 0 else float("inf")
    print(f"{name:<34} {ours:>10.4f} {unit:<6} baseline {base:>10.4f} {unit:<6} ratio {ratio:6.2f}x", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--videos", type=int, default=20)
    parser.add_argument("--caption-images", type=int, default=None,
                        help="images to caption (default: the uncaptioned half of --files)")
    args = parser.parse_args(argv)

    os.environ["ALLOW_PRIVATE_DOWNLOADS"] = "1"
    tmp = Path(tempfile.mkdtemp(prefix="bench-trainer-"))
    www = tmp / "www"
    www.mkdir()
    (www / "ds.zip").write_bytes(_zip_of_images(args.files))
    httpd = _serve(None, www)
    url = f"http://127.0.0.1:{httpd.server_address[1]}/ds.zip"
    print(f"dataset: {args.files} images ({(www / 'ds.zip').stat().st_size / 1e6:.1f} MB zip), work dir {tmp}\n")

    from common.processes import free_port
    from handlers.diffusion_pipe_trainer import buckets, captions, configs, dataset, training
    from handlers.diffusion_pipe_trainer.joycaption import caption_batches
    from handlers.diffusion_pipe_trainer.models import JOYCAPTION_DIR, REGISTRY
    from handlers.diffusion_pipe_trainer.schema import parse_request
    from handlers.diffusion_pipe_trainer.train_log import TrainProgress

    # download + extract
    t = time.perf_counter()
    media = dataset.prepare(url, "images", tmp / "dl", tmp / "ds" / "images", precaptioned=False)
    ours = time.perf_counter() - t
    t = time.perf_counter()
    raw = urllib.request.urlopen(url).read()
    zipfile.ZipFile(io.BytesIO(raw)).extractall(tmp / "bare")
    _row(f"download+extract ({media.count} files)", ours, time.perf_counter() - t)

    # captions: JoyCaption on the tiny model
    from scripts.tiny_models.trainer import build

    models = tmp / "models"
    build(models)
    todo = media.uncaptioned[: args.caption_images] if args.caption_images else media.uncaptioned
    t = time.perf_counter()
    asyncio.run(captions.caption_images(models / JOYCAPTION_DIR, todo, prompt="Write a caption.", trigger="ohwx",
                                        max_new_tokens=16, on_caption=lambda p, c: None, log_file=tmp / "jc.log",
                                        batch_size=8))
    ours = time.perf_counter() - t
    gen = caption_batches(str(models / JOYCAPTION_DIR), [str(p) for p in todo], "Write a caption.",
                          batch_size=8, max_new_tokens=16)
    for _ in range(8):  # the first batch includes loading the model; the baseline leaves that out
        next(gen)
    t = time.perf_counter()
    rest = sum(1 for _ in gen)
    base_total = (time.perf_counter() - t) * len(todo) / max(1, rest)
    _row(f"caption/image ({len(todo)} images)", ours / len(todo), base_total / len(todo))
    print(f"{'  (JoyCaption child, total)':<34} {ours:>10.2f} s")

    # captions: Gemini stand-in
    sys.path.insert(0, str(ROOT))
    from tests.fakes.gemini import FakeGemini

    vids = tmp / "vids"
    vids.mkdir()
    clips = []
    for i in range(args.videos):
        p = vids / f"clip{i}.mp4"
        p.write_bytes(os.urandom(200_000))
        clips.append(p)
    with FakeGemini() as g:
        os.environ.update({"GEMINI_BASE_URL": g.base_url, "GEMINI_POLL_S": "0.01"})
        t = time.perf_counter()
        captions.caption_videos(clips, api_key=g.state.api_key, model=None, prompt=None, trigger="ohwx",
                                on_caption=lambda p, c: None)
        ours = time.perf_counter() - t
        import requests

        t = time.perf_counter()
        for p in clips:  # bare: one POST per clip carrying its bytes
            requests.post(f"{g.base_url}/healthless", data=p.read_bytes(), timeout=10)
        base = time.perf_counter() - t
    _row(f"caption/video ({args.videos} clips)", ours / args.videos, base / args.videos)

    # config
    req = parse_request({"model_type": "sdxl", "dataset": {"type": "images", "images_url": url}})
    spec = REGISTRY["sdxl"]
    t = time.perf_counter()
    cfg = configs.build_config(spec, req.training, models_dir=models, output_dir=tmp / "out",
                               dataset_toml=tmp / "cfg" / "dataset.toml")
    ds = configs.build_dataset(spec, req.training, configs.DatasetDirs(media.folder, None, 1, 1))
    configs.write_configs(tmp / "cfg", cfg, ds)
    ours = time.perf_counter() - t
    t = time.perf_counter()
    (tmp / "cfg" / "bare.json").write_text(json.dumps(cfg))
    _row("config (build+write+read back)", ours, time.perf_counter() - t)

    # upload
    lora = tmp / "adapter_model.safetensors"
    lora.write_bytes(os.urandom(64 * 1024 * 1024))
    sink = _serve(_PutSink)
    put_url = f"http://127.0.0.1:{sink.server_address[1]}/upload/lora.zip?X-Amz-Signature=abc"
    try:
        from common.uploads import upload

        t = time.perf_counter()
        upload([lora], {"method": "presigned_put", "upload_url": put_url}, job_id="bench", volume_dir=tmp)
        ours = time.perf_counter() - t
        import requests

        t = time.perf_counter()
        with open(lora, "rb") as f:
            requests.put(put_url, data=f, timeout=60)
        _row("upload (64 MB, presigned PUT)", ours, time.perf_counter() - t)
    except ImportError as exc:
        print(f"upload: skipped ({exc})")

    # engine start overhead: dataset ready -> first engine log line
    engine = tmp / "diffusion-pipe"
    engine.mkdir()
    (engine / "train.py").write_text("# stand-in\n")
    os.environ.update({"DIFFUSION_PIPE_DIR": str(engine), "DIFFUSION_PIPE_LAUNCHER": f"{sys.executable} {FAKE_ENGINE}",
                       "TRAINER_NUM_GPUS": "1"})
    cfg["epochs"] = 1
    configs.write_configs(tmp / "cfg", cfg, ds)
    samples = []
    for _ in range(3):
        first: list[float] = []
        t = time.perf_counter()
        # what the handler does between "dataset ready" and the launch: configs, the engine's buckets, run
        configs.write_configs(tmp / "cfg", cfg, ds)
        files = sorted(p for p in media.folder.glob("*.png") if p.with_suffix(".txt").is_file())
        plan = buckets.plan(ds, [buckets.Directory(buckets.media_of(files, "images"), 1)], micro_batch=1,
                            grad_accum=1, world_size=1)
        cmd = training.command(tmp / "cfg" / "config.toml", resume=False, gpu_ids=[0],
                               master_port=free_port())
        asyncio.run(training.run(cmd, gpu_ids=[0], progress=TrainProgress(1, plan.steps_per_epoch),
                                 log_file=tmp / "t.log", on_update=lambda p: None,
                                 on_first_line=lambda f=first: f.append(time.perf_counter())))
        samples.append(first[0] - t)
    bare = []
    for _ in range(3):
        t = time.perf_counter()
        p = subprocess.Popen([sys.executable, str(FAKE_ENGINE), "--include=localhost:0", "train.py", "--deepspeed",
                              "--config", str(tmp / "cfg" / "config.toml")], cwd=engine, stdout=subprocess.PIPE)
        p.stdout.readline()
        bare.append(time.perf_counter() - t)
        p.wait()
    _row("dataset ready -> first engine line", min(samples), min(bare))
    print(f"\nengine-start overhead of the wrapper: {min(samples) - min(bare):.3f} s (goal < 2 s; "
          f"{'met' if min(samples) < 2 else 'NOT met'})")
    httpd.shutdown()
    sink.shutdown()


if __name__ == "__main__":
    main()
