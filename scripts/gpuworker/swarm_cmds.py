"""`gpuworker swarm ...`: wake a swarm-worker on a RunPod endpoint and release it (swarm_wake.py), and
make images or image-to-video through a SwarmUI URL (a woken worker's, a vast.ai instance's, any SwarmUI)."""

from __future__ import annotations

import argparse
import base64
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from scripts.gpuworker.console import CliError, Console
from scripts.gpuworker.runpod_api import Endpoint, api_key_from_env
from scripts.gpuworker.swarm_wake import release, release_hint, shutdown, wake

# Wan 2.2 image-to-video with the LightX2V 4-step LoRA: 81 frames ≈ 5 s at 16 fps.
WAN_FRAMES, WAN_CFG, WAN_STEPS, WAN_FPS = 81, 3.5, 4, 16
MAX_INIT_IMAGE_BYTES = 100 * 1024 * 1024
IMAGE_MAGIC = {b"\x89PNG": "image/png", b"\xff\xd8\xff": "image/jpeg", b"GIF8": "image/gif", b"BM": "image/bmp"}


def endpoint_from(args: argparse.Namespace) -> Endpoint:
    return Endpoint(args.endpoint, api_key=api_key_from_env(), base=args.base_url)


def cmd_wake(args: argparse.Namespace, console: Console) -> int:
    info = wake(console, endpoint_from(args), args, duration=args.duration, timeout=args.timeout)
    session = f", SwarmUI session {info['session_id']}" if info.get("session_id") else ""
    console.result(info, f"{info['url']}\n(worker {info['worker_id']}{session}, ready after {info['waited_s']} s)")
    console.note(release_hint(args.endpoint, info))
    return 0


def cmd_shutdown(args: argparse.Namespace, console: Console) -> int:
    result = shutdown(endpoint_from(args), cancel=args.cancel, timeout=args.timeout, poll=args.poll)
    text = (f"shutdown acknowledged (released {result.get('released_holds', 0)} hold(s))" if result["success"]
            else f"shutdown not acknowledged: {result.get('error') or 'still queued'}")
    text += "".join(f"\njob {k}: {v}" for k, v in result["cancelled"].items())
    console.result(result, text)
    return 0 if result["success"] else 1


# -- generating through a SwarmUI URL --------------------------------------------------------------------


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """`--param key=value` (value parsed as JSON when it is JSON, else kept as a string)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CliError(f"--param: {pair!r} is not KEY=VALUE", 2)
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def image_data_url(source: str, allow_private: bool) -> str:
    """A local file or an http(s)/s3/hf URL as a `data:` URL for SwarmUI's `initimage`."""
    if "://" in source:
        from common.downloads import download
        from common.jobs import JobError

        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = download(source, Path(tmp) / "init-image", max_bytes=MAX_INIT_IMAGE_BYTES,
                                allow_private=allow_private)
            except JobError as exc:
                raise CliError(f"image: {exc}") from None
            data = path.read_bytes()
    else:
        path = Path(source)
        if not path.is_file():
            raise CliError(f"image: {path} is not a file", 2)
        if path.stat().st_size > MAX_INIT_IMAGE_BYTES:
            raise CliError(f"image: {path} is over {MAX_INIT_IMAGE_BYTES // 2**20} MB", 2)
        data = path.read_bytes()
    mime = next((m for magic, m in IMAGE_MAGIC.items() if data.startswith(magic)), None)
    if mime is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        mime = "image/webp"
    if mime is None:
        raise CliError(f"image: {source} is not a PNG, JPEG, WebP, GIF or BMP image", 2)
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def swarm_target(args: argparse.Namespace, console: Console) -> tuple[str, str | None, Endpoint | None, dict]:
    """(url, token, endpoint, wake info): `--url`/`SWARM_URL`, or wake `--endpoint` first."""
    url = args.url or os.environ.get("SWARM_URL")
    token = os.environ.get("SWARM_TOKEN")
    if args.endpoint:
        if args.url:
            raise CliError("give --url or --endpoint, not both", 2)
        endpoint = endpoint_from(args)
        info = wake(console, endpoint, args, duration=args.keepalive, timeout=args.wake_timeout)
        console.note(f"worker {info['worker_id']} ready")
        return info["url"], None, endpoint, info
    if not url:
        raise CliError("no SwarmUI: give --url URL (or env SWARM_URL), or --endpoint ENDPOINT to wake a worker", 2)
    if token:
        from scripts.gpuworker.console import register_key

        register_key(token)
    return url.rstrip("/"), token, None, {}


def run_generation(args: argparse.Namespace, console: Console, body: dict[str, Any], label: str) -> int:
    from pydantic import ValidationError

    from common.swarmui import SwarmUIError, SyncSwarmUIClient, params_for

    try:
        params = params_for(body)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise CliError(f"invalid parameters: {problems}", 2) from None
    out = Path(args.out)
    out_dir = out.parent if out.suffix else out
    url, token, endpoint, info = swarm_target(args, console)
    saved: list[Path] = []
    progress_events = 0
    started = time.monotonic()
    try:
        with console.progress() as bar, SyncSwarmUIClient(url, token=token, generate_timeout=args.timeout) as client:
            task = bar.add_task(label, total=100, status="queued")

            def on_event(event: dict) -> None:
                prog = event.get("gen_progress")
                if isinstance(prog, dict) and isinstance(prog.get("overall_percent"), (int, float)):
                    bar.update(task, completed=float(prog["overall_percent"]) * 100, status="generating")
                elif "status" in event:
                    counts = event["status"] or {}
                    bar.update(task, status="waiting for the backend" if counts.get("waiting_gens") else "started")

            result = client.generate(params, on_event=on_event, own_session=True)  # Ctrl-C interrupts it
            if not result.outputs:
                raise CliError("SwarmUI returned no outputs")
            progress_events = result.progress_events
            bar.update(task, completed=100, status="saving")
            for index, ref in enumerate(result.outputs):
                path = client.save_output(ref, out_dir, index=index)
                if out.suffix and len(result.outputs) == 1:
                    path = path.replace(out)
                saved.append(path)
    except SwarmUIError as exc:
        raise CliError(f"SwarmUI: {exc}") from None
    finally:
        if endpoint is not None and args.shutdown:
            release(endpoint, info, args.poll)
            console.note("worker released")
        elif endpoint is not None:
            console.note(release_hint(endpoint.endpoint_id, info))
    report = {"files": [str(p) for p in saved], "sizes": [p.stat().st_size for p in saved],
              "seconds": round(time.monotonic() - started, 1), "progress_events": progress_events,
              "swarm_url": url, "params": params.to_body()}
    report["params"]["initimage"] = f"<{len(body.get('initimage', ''))} chars>" if "initimage" in body else None
    report["params"] = {k: v for k, v in report["params"].items() if v is not None}
    console.result(report, "\n".join(f"saved {p} ({p.stat().st_size} bytes)" for p in saved))
    return 0


def common_gen_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": args.prompt, "images": args.images}
    for key, value in (("negativeprompt", args.negative), ("model", args.model), ("seed", args.seed),
                       ("width", args.width), ("height", args.height)):
        if value is not None:
            body[key] = value
    body.update(parse_params(args.param))
    return body


def cmd_generate(args: argparse.Namespace, console: Console) -> int:
    body = common_gen_body(args)
    for key, value in (("steps", args.steps), ("cfgscale", args.cfg)):
        if value is not None:
            body[key] = value
    return run_generation(args, console, body, "image")


def cmd_i2v(args: argparse.Namespace, console: Console) -> int:
    body = common_gen_body(args)
    body.update({"initimage": image_data_url(args.image, args.allow_private), "initimagecreativity": 0,
                 "videomodel": args.video_model, "videoframes": args.frames, "videocfg": args.cfg,
                 "videosteps": args.steps, "videofps": args.fps, "videoformat": args.format})
    if args.swap_model:
        body["videoswapmodel"] = args.swap_model
        if args.swap_percent is not None:
            body["videoswappercent"] = args.swap_percent
    body.update(parse_params(args.param))  # explicit --param wins
    return run_generation(args, console, body, "video")


def add_endpoint_args(p: argparse.ArgumentParser, *, required: bool) -> None:
    if required:
        p.add_argument("endpoint", help="RunPod endpoint id running swarm-worker")
    else:
        p.add_argument("--endpoint", help="wake a swarm-worker on this RunPod endpoint and use its public URL")
    p.add_argument("--base-url", help="RunPod API base (default: env RUNPOD_ENDPOINT_BASE_URL or api.runpod.ai/v2)")
    p.add_argument("--poll", type=float, default=2.0, help="seconds between polls (default 2)")


def add_gen_args(p: argparse.ArgumentParser) -> None:
    add_endpoint_args(p, required=False)
    p.add_argument("--url", help="SwarmUI base URL (env SWARM_URL); a token path like /t/<token> is kept")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative", help="negative prompt")
    p.add_argument("--model", help="image model, e.g. OfficialStableDiffusion/sd_xl_base_1.0")
    p.add_argument("--seed", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--images", type=int, default=1)
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="any SwarmUI parameter")
    p.add_argument("-o", "--out", default=".", help="output folder, or a file name for a single output")
    p.add_argument("--timeout", type=float, default=3600, help="generation timeout in seconds")
    p.add_argument("--keepalive", type=float, default=1800, help="with --endpoint: the most seconds the worker is held")
    p.add_argument("--wake-timeout", type=float, default=800, help="with --endpoint: seconds to wait for ready")
    p.add_argument("--shutdown", action="store_true", help="with --endpoint: release the worker afterwards")
    add_wake_args(p)


def add_wake_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--protocol", choices=("lease", "legacy"), default="lease",
                   help="lease (default): one streamed job holds the worker it names; legacy: keepalive + ready "
                        "actions, as SwarmUI-Runpod-Serverless-Backend v2.0 does")
    p.add_argument("--idle", type=float, help="lease: release after SwarmUI is idle this many seconds "
                                             "(default: the worker's, 120)")
    p.add_argument("--interval", type=float, default=30, help="legacy: keepalive ping interval in seconds")
    p.add_argument("--action", choices=("keepalive", "wakeup"), default="keepalive", help="legacy: the hold action")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    group = sub.add_parser("swarm", help="SwarmUI workers: wake/shutdown on RunPod, generate and i2v via a URL")
    cmds = group.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = cmds.add_parser("wake", parents=[common], help="hold a worker (lease job), wait until ready, print its URL")
    add_endpoint_args(p, required=True)
    p.add_argument("--duration", type=float, default=1800, help="the most seconds the worker is held")
    p.add_argument("--timeout", type=float, default=800, help="seconds to wait for ready (the extension uses 800)")
    add_wake_args(p)
    p.set_defaults(func=cmd_wake)

    p = cmds.add_parser("shutdown", parents=[common], help="release the worker's holds (legacy shutdown action)")
    add_endpoint_args(p, required=True)
    p.add_argument("--cancel", action="append", default=[], metavar="JOB_ID", help="also cancel this job (repeatable)")
    p.add_argument("--timeout", type=float, default=120)
    p.set_defaults(func=cmd_shutdown)

    p = cmds.add_parser("generate", parents=[common], help="text-to-image through SwarmUI, outputs saved locally")
    add_gen_args(p)
    p.add_argument("--steps", type=int)
    p.add_argument("--cfg", type=float)
    p.set_defaults(func=cmd_generate)

    p = cmds.add_parser("i2v", parents=[common], help="image-to-video (Wan 2.2 defaults: 81 frames, cfg 3.5, 4 steps)")
    p.add_argument("image", help="start frame: a local file or an http(s)/s3/hf URL")
    add_gen_args(p)
    p.add_argument("--video-model", required=True, help="I2V model (Wan 2.2: the high-noise file)")
    p.add_argument("--swap-model", help="Wan 2.2 low-noise model (videoswapmodel)")
    p.add_argument("--swap-percent", type=float)
    p.add_argument("--frames", type=int, default=WAN_FRAMES)
    p.add_argument("--cfg", type=float, default=WAN_CFG)
    p.add_argument("--steps", type=int, default=WAN_STEPS)
    p.add_argument("--fps", type=int, default=WAN_FPS)
    p.add_argument("--format", default="h264-mp4", help="videoformat: h264-mp4, webm, webp, gif, ...")
    p.add_argument("--allow-private", action="store_true", help="the image URL may be on a private network")
    p.set_defaults(func=cmd_i2v)
