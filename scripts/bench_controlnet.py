"""controlnet-pyworker benchmarks.

    python -m scripts.bench_controlnet [--models DIR] [--reps 5]
        CPU, tiny models: end-to-end HTTP /generate and the RunPod handler against the bare
        pipeline call, as ratios (goal <= 1.10 each), and the model server's cold start (process
        start -> port answering, -> MODEL_SERVER_READY line; goal <= 3 s).

    python -m scripts.bench_controlnet --full-size [--steps 6] [--size 1024] [--no-compile]
        GPU: random weights in the real SDXL UNet / text encoders / VAE and full depth ControlNet
        shapes (built from configs here, nothing downloaded), fp16, Lightning-style 6 steps,
        cfg 2, Euler trailing, 1024x1024 with a mock depth map; latency without and with
        torch.compile of the UNet and ControlNet.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BODY = {"prompt": "a quiet valley with a river at dawn", "mock_depth": True, "width": 256, "height": 256,
        "seed": 42, "model": "lightning"}


def _median(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _start_server(models: Path, tmp: Path) -> tuple[subprocess.Popen, int, Path, dict[str, float]]:
    """The model server as a subprocess; returns it with its cold-start times."""
    import requests

    from common.processes import free_port

    port = free_port()
    model_log = tmp / f"model_server_{port}.log"
    env = dict(os.environ, MODELS_DIR=str(models), MODEL_LOG=str(model_log), MODEL_SERVER_HOST="127.0.0.1",
               MODEL_SERVER_PORT=str(port), PRELOAD_MODEL="lightning", PYTHONPATH=str(REPO), LOG_LEVEL="warning")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "handlers.controlnet_pyworker.server"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "server.err", "wb"))
    marks: dict[str, float] = {}
    while "ready" not in marks:
        if proc.poll() is not None:
            raise SystemExit(f"model server exited: {(tmp / 'server.err').read_text()[-2000:]}")
        if "listening" not in marks:
            try:
                requests.get(f"http://127.0.0.1:{port}/ping", timeout=0.5)
                marks["listening"] = time.perf_counter() - t0
            except requests.RequestException:
                pass
        if model_log.exists() and "MODEL_SERVER_READY" in model_log.read_text():
            marks["ready"] = time.perf_counter() - t0
        time.sleep(0.02)
    return proc, port, model_log, marks


def bench_cpu(models: Path | None, reps: int) -> None:
    import requests

    os.environ["DEVICE"] = "cpu"
    # Idle OpenMP workers sleep instead of spinning: with the default (active) policy, the workers of
    # whichever process ran last keep both cores busy for a while and slow the next path down, which
    # swung the HTTP ratio between 0.64 and 1.06. Set before torch loads; the server inherits it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with tempfile.TemporaryDirectory(prefix="bench-cn-") as tmp_s:
        tmp = Path(tmp_s)
        if models is None:
            from scripts.tiny_models.controlnet import build

            models = build(tmp / "models")
        os.environ["MODELS_DIR"] = str(models)

        proc, port, _, cold = _start_server(models, tmp)
        try:
            from handlers.controlnet_pyworker import manifest, schema
            from handlers.controlnet_pyworker.handler import get_engine, handler

            engine = get_engine()
            m = manifest.load()
            req = schema.validate(BODY, m)
            lv = engine.get("lightning")
            control = engine.depth_image(req)[0]

            # Every in-process call runs torch on one thread, as the worker does (the SDK's event loop hands
            # each job to an executor thread it reuses): torch's OpenMP workers belong to the calling thread,
            # and two calling threads would leave each other's workers spinning on the two cores.
            torch_thread = concurrent.futures.ThreadPoolExecutor(max_workers=1)
            loop = asyncio.new_event_loop()  # one loop for every handler call, as in the runpod SDK's worker
            loop.set_default_executor(torch_thread)

            def bare():
                torch_thread.submit(bare_call).result()

            def bare_call():
                import torch

                lv.pipe.scheduler = engine.make_scheduler("euler_trailing", lv.scheduler_config, 42)
                with torch.inference_mode():
                    lv.pipe(prompt=BODY["prompt"], image=control, num_inference_steps=6, guidance_scale=2.0,
                            controlnet_conditioning_scale=0.8, width=256, height=256,
                            generator=torch.Generator("cpu").manual_seed(42), output_type="pil")

            def via_handler():
                out = loop.run_until_complete(handler({"id": "bench", "input": dict(BODY)}))
                assert "images" in out, out

            url = f"http://127.0.0.1:{port}/generate"

            def via_http():
                r = requests.post(url, json=BODY, timeout=120)
                assert r.status_code == 200, r.text
                r.json()

            for fn in (bare, via_handler, via_http):  # warm up each path
                fn()
            # interleave rounds so load from other processes hits every path alike
            rounds = {"bare": [], "handler": [], "http": []}
            for _ in range(reps):
                for key, fn in (("bare", bare), ("handler", via_handler), ("http", via_http)):
                    rounds[key].append(_median(fn, 1))
        finally:
            proc.terminate()
            proc.wait(20)
            if "loop" in locals():
                loop.close()
                torch_thread.shutdown()
        best = {k: min(v) for k, v in rounds.items()}
        med = {k: statistics.median(v) for k, v in rounds.items()}
        print("controlnet-pyworker, CPU, tiny models, 256x256, lightning 6 steps, cfg 2, mock depth "
              f"({reps} interleaved rounds; ratios of the best times, which other load on the machine "
              "disturbs least):")
        for key, label in (("bare", "bare pipeline call"), ("handler", "RunPod handler"),
                           ("http", "HTTP POST /generate")):
            ratio = "" if key == "bare" else f"   ratio {best[key] / best['bare']:.3f} (goal <= 1.10)"
            print(f"  {label:<22} best {best[key] * 1000:8.1f} ms  median {med[key] * 1000:8.1f} ms{ratio}")
        print(f"  server cold start: port answering {cold['listening']:.2f} s, MODEL_SERVER_READY "
              f"{cold['ready']:.2f} s (goal <= 3 s)")


# -- full size (GPU) -------------------------------------------------------------------------
def sdxl_configs() -> dict:
    """SDXL base 1.0 component configs (stabilityai/stable-diffusion-xl-base-1.0) and the full
    depth ControlNet's conditioning embedding (diffusers/controlnet-depth-sdxl-1.0)."""
    unet = dict(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816, norm_num_groups=32,
    )
    vae = dict(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2, sample_size=1024, scaling_factor=0.13025, force_upcast=False,
    )
    te1 = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
               num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
    te2 = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
               num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)
    return {"unet": unet, "vae": vae, "text_encoder": te1, "text_encoder_2": te2,
            "controlnet_conditioning_channels": (16, 32, 96, 256)}


def build_full_size(device: str, dtype):
    import torch
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        EulerDiscreteScheduler,
        StableDiffusionXLControlNetPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from scripts.tiny_models.controlnet import _tokenizer

    cfg = sdxl_configs()
    tokenizer = _tokenizer()
    ids = {"bos_token_id": len(tokenizer) - 2, "eos_token_id": len(tokenizer) - 1, "pad_token_id": len(tokenizer) - 1}
    with torch.device(device):   # random init directly on the device: seconds instead of minutes
        unet = UNet2DConditionModel(**cfg["unet"])
        controlnet = ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=cfg["controlnet_conditioning_channels"])
        vae = AutoencoderKL(**cfg["vae"])
        te1 = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"], **ids))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**cfg["text_encoder_2"], **ids))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="trailing")
    pipe = StableDiffusionXLControlNetPipeline(
        vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tokenizer, tokenizer_2=_tokenizer(),
        unet=unet, controlnet=controlnet, scheduler=scheduler, add_watermarker=False,
    ).to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bench_full_size(steps: int, size: int, reps: int, compile_too: bool) -> None:
    import torch

    from handlers.controlnet_pyworker.depth import mock

    if not torch.cuda.is_available():
        raise SystemExit("--full-size needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    t = time.perf_counter()
    pipe = build_full_size("cuda", torch.float16)
    params = {n: sum(p.numel() for p in getattr(pipe, n).parameters()) / 1e9
              for n in ("unet", "controlnet", "vae", "text_encoder", "text_encoder_2")}
    print(f"built random-weight SDXL + full depth ControlNet in {time.perf_counter() - t:.1f}s; "
          f"params (B): {json.dumps({k: round(v, 3) for k, v in params.items()})}")
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.controlnet.to(memory_format=torch.channels_last)
    control = mock(size, size)

    def call():
        with torch.inference_mode():
            pipe(prompt="a quiet valley with a river at dawn", negative_prompt="blurry", image=control,
                 num_inference_steps=steps, guidance_scale=2.0, controlnet_conditioning_scale=0.8, width=size,
                 height=size, generator=torch.Generator("cuda").manual_seed(0), output_type="pil")
        torch.cuda.synchronize()

    for _ in range(2):
        call()
    eager = _median(call, reps)
    print(f"{torch.cuda.get_device_name()}: {size}x{size}, {steps} steps, cfg 2, ControlNet, fp16 + SDPA: "
          f"{eager:.3f} s (median of {reps}); peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    if compile_too:
        pipe.unet = torch.compile(pipe.unet, fullgraph=True)
        pipe.controlnet = torch.compile(pipe.controlnet, fullgraph=True)
        t = time.perf_counter()
        call()
        print(f"torch.compile warm-up (first call, compiles): {time.perf_counter() - t:.1f} s")
        call()
        compiled = _median(call, reps)
        print(f"with torch.compile: {compiled:.3f} s, ratio compiled/eager {compiled / eager:.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, help="tiny controlnet-pyworker models (default: built in a temp dir)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--full-size", action="store_true", help="GPU: real SDXL shapes, random weights")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--no-compile", action="store_true", help="with --full-size: skip the torch.compile run")
    args = parser.parse_args(argv)
    if args.full_size:
        bench_full_size(args.steps, args.size, args.reps, not args.no_compile)
    else:
        bench_cpu(args.models, args.reps)


if __name__ == "__main__":
    main()
