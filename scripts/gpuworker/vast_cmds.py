"""`gpuworker vast ...`: rent a vast.ai GPU (SwarmUI template or any image), wait for it, find its
URL, destroy it, and guard it against forgotten billing."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import requests

from scripts.gpuworker.console import CliError, Console
from scripts.gpuworker.vast_api import (
    RUNNING,
    VastApi,
    api_key_from_env,
    instance_url,
    offer_query,
)
from scripts.gpuworker.vast_guard import GuardState, guard_round, swarm_headers

REPO_ROOT = Path(__file__).resolve().parents[2]
SWARM_PORT = 7801


def api_from(args: argparse.Namespace) -> VastApi:
    return VastApi(api_key=api_key_from_env(), base=args.base_url)


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CliError(f"--env: {pair!r} is not KEY=VALUE", 2)
        env[key.strip()] = value
    return env


def duration_minutes(text: str) -> float:
    """`90`, `90m`, `2h`, `45s` -> minutes."""
    value = text.strip().lower()
    scale = {"s": 1 / 60, "m": 1.0, "h": 60.0}.get(value[-1:], None)
    number = value[:-1] if scale else value
    try:
        minutes = float(number) * (scale or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 30m, 2h, 45s)") from None
    if minutes <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return minutes


def cmd_offers(args: argparse.Namespace, console: Console) -> int:
    query = offer_query(gpu=args.gpu, num_gpus=args.num_gpus, min_vram_gb=args.min_vram, max_price=args.max_price,
                        min_reliability=args.min_reliability, min_disk_gb=args.disk, verified=not args.unverified,
                        limit=args.limit)
    offers = api_from(args).search_offers(query)
    rows = [f"{'offer':>10}  {'gpu':<14} {'n':>2} {'vram':>6} {'$/h':>7} {'rel':>6} {'disk':>6}  location"]
    for o in offers:
        rows.append(f"{o.get('id'):>10}  {str(o.get('gpu_name'))[:14]:<14} {o.get('num_gpus', 1):>2} "
                    f"{(o.get('gpu_ram') or 0) / 1000:>5.0f}G {o.get('dph_total', 0):>7.3f} "
                    f"{o.get('reliability2', 0):>6.3f} {o.get('disk_space', 0):>5.0f}G  {o.get('geolocation', '')}")
    if not offers:
        rows = ["no offers match"]
    console.result(offers, "\n".join(rows))
    return 0


def create_body(args: argparse.Namespace) -> dict:
    if not args.template and not args.image:
        raise CliError("create: give --template HASH or --image IMAGE", 2)
    env = parse_env(args.env)
    ports = args.port or ([SWARM_PORT] if args.image and not args.template else [])
    for port in ports:
        env[f"-p {port}:{port}"] = "1"
    onstart = args.onstart
    if args.onstart_file:
        path = Path(args.onstart_file)
        if not path.is_file():
            raise CliError(f"--onstart-file: {path} is not a file", 2)
        onstart = path.read_text()
    body: dict = {"client_id": "me", "env": env, "disk": args.disk, "runtype": args.runtype,
                  "label": args.label or f"gpuworker-{time.strftime('%Y%m%d-%H%M%S')}"}
    if args.template:
        body["template_hash_id"] = args.template
    if args.image:
        body["image"] = args.image
    if onstart:
        body["onstart"] = onstart
    return body


def start_guard_process(instance_id: int, base: str, interval: float) -> Path:
    """`gpuworker vast guard` for this instance, detached so it outlives the terminal."""
    log = GuardState().dir / f"guard-{instance_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        subprocess.Popen([sys.executable, "-m", "scripts.gpuworker", "vast", "guard", "--instance", str(instance_id),
                          "--base-url", base, "--interval", str(interval)], cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return log


def cmd_create(args: argparse.Namespace, console: Console) -> int:
    body = create_body(args)
    api = api_from(args)
    instance_id = api.create_instance(args.offer_id, body)
    result: dict = {"instance_id": instance_id, "offer_id": args.offer_id, "label": body["label"]}
    console.note(f"instance {instance_id} created from offer {args.offer_id} (label {body['label']})")
    if args.max_hours or args.max_idle:
        now = time.time()
        GuardState().add(instance_id, {"created_at": now, "last_active": now, "max_hours": args.max_hours,
                                       "max_idle_minutes": args.max_idle, "port": args.guard_port,
                                       "label": body["label"], "base": api.base})
        guard = {"max_hours": args.max_hours, "max_idle_minutes": args.max_idle, "state": str(GuardState().path)}
        if args.guard_process:
            guard["log"] = str(start_guard_process(instance_id, api.base, args.guard_interval))
        result["guard"] = guard
        console.note(f"guard: destroyed after {args.max_hours or '-'} h or {args.max_idle or '-'} min idle"
                     + (f"; log {guard['log']}" if "log" in guard else "; run `gpuworker vast guard` to enforce"))
    if args.wait:
        with console.left_running(f"instance {instance_id} keeps running (and billing): "
                                  f"`gpuworker vast destroy {instance_id}`, or `gpuworker vast wait {instance_id}`"):
            result["url"] = wait_ready(console, api, instance_id, port=args.guard_port, timeout=args.timeout,
                                       poll=args.poll, check_app=True)
    console.result(result, "\n".join([f"instance {instance_id}"] + ([f"url {result['url']}"] if "url" in result
                                                                      else [])))
    return 0


def swarm_answers(url: str) -> bool:
    """SwarmUI hands out a session at `url` (with `SWARM_TOKEN` as Bearer when set); a 401 means a token
    gate is up but refuses this caller, which waiting will not change."""
    try:
        resp = requests.post(f"{url}/API/GetNewSession", json={}, headers=swarm_headers(), timeout=10)
    except requests.RequestException:
        return False
    if resp.status_code == 401:
        raise CliError(f"{url} answers 401: it is behind a token gate; export SWARM_TOKEN with its token "
                       "(the swarm-worker image: the SWARM_ACCESS_TOKEN you created it with)")
    try:
        return resp.status_code == 200 and bool(resp.json().get("session_id"))
    except (ValueError, AttributeError):
        return False


def wait_ready(console: Console, api: VastApi, instance_id: int, *, port: int, timeout: float, poll: float,
               check_app: bool) -> str:
    """Poll until the instance runs, its port is mapped and (with `check_app`) SwarmUI answers there."""
    deadline = time.monotonic() + timeout
    last = None
    with console.progress() as bar:
        task = bar.add_task(f"instance {instance_id}", total=None, status="")
        while True:
            info = api.show_instance(instance_id)
            if info is None:
                raise CliError(f"instance {instance_id} does not exist (destroyed?)")
            state = info.get("actual_status") or "creating"
            url = instance_url(info, port) if state == RUNNING else None
            phase = state if state != RUNNING else ("waiting for SwarmUI" if url else "waiting for the port")
            if phase != last:
                last = phase
                bar.update(task, status=phase)
                if bar.disable:
                    console.note(f"instance {instance_id}: {phase}"
                                 + (f" ({info['status_msg']})" if info.get("status_msg") else ""))
            if state in ("exited", "offline") or (state == "stopped" and info.get("intended_status") == "stopped"):
                raise CliError(f"instance {instance_id} is {state}: {info.get('status_msg') or 'no message'}")
            if url and (not check_app or swarm_answers(url)):
                return url
            if time.monotonic() >= deadline:
                raise CliError(f"instance {instance_id} not ready after {timeout:g} s (last: {phase}); it is still "
                               f"billing: `gpuworker vast destroy {instance_id}` if you give up", 3)
            time.sleep(poll)


def cmd_wait(args: argparse.Namespace, console: Console) -> int:
    url = wait_ready(console, api_from(args), args.instance_id, port=args.port, timeout=args.timeout,
                     poll=args.poll, check_app=not args.no_app_check)
    console.result({"instance_id": args.instance_id, "url": url}, url)
    return 0


def cmd_url(args: argparse.Namespace, console: Console) -> int:
    info = api_from(args).show_instance(args.instance_id)
    if info is None:
        raise CliError(f"instance {args.instance_id} does not exist")
    url = instance_url(info, args.port)
    if url is None:
        raise CliError(f"instance {args.instance_id} has no mapping for port {args.port} yet "
                       f"(status: {info.get('actual_status') or 'creating'})")
    console.result({"instance_id": args.instance_id, "url": url, "status": info.get("actual_status")}, url)
    return 0


def cmd_destroy(args: argparse.Namespace, console: Console) -> int:
    api = api_from(args)
    results = []
    for instance_id in args.instance_ids:
        reply = api.destroy_instance(instance_id)
        GuardState().remove(instance_id)
        gone = not reply.get("success")
        results.append({"instance_id": instance_id, "destroyed": not gone, "already_gone": gone})
    console.result(results, "\n".join(f"instance {r['instance_id']}: "
                                      + ("already gone" if r["already_gone"] else "destroyed") for r in results))
    return 0


def cmd_guard(args: argparse.Namespace, console: Console) -> int:
    api = api_from(args)
    state = GuardState()
    ids = args.instance or None
    history: list[dict] = []
    while True:
        results = guard_round(api, state, ids)
        for r in results:
            if r["action"] != "keep":
                console.note(f"{time.strftime('%H:%M:%S')} instance {r['id']}: {r['action']} ({r.get('reason')})")
        history.extend(r for r in results if r["action"] != "keep")
        remaining = [k for k in state.read() if not ids or int(k) in ids]
        if args.once or not remaining:
            break
        time.sleep(args.interval)
    console.result(history if not args.once else results,
                   "\n".join(f"instance {r['id']}: {r['action']}" + (f" ({r['reason']})" if r.get("reason") else "")
                             for r in (history if not args.once else results)) or "nothing to guard")
    return 0


def add_api_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-url", help="vast.ai server (default: env VAST_URL or https://console.vast.ai)")


def add_wait_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, default=1200, help="seconds to wait (default 1200)")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between checks (default 5)")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    group = sub.add_parser("vast", help="vast.ai instances (key: env VAST_API_KEY)")
    cmds = group.add_subparsers(dest="command", required=True, metavar="COMMAND")
    env_port = int(os.environ.get("SWARM_PUBLIC_PORT", SWARM_PORT))

    p = cmds.add_parser("offers", parents=[common], help="search rentable GPUs, cheapest first")
    add_api_args(p)
    p.add_argument("--gpu", help="GPU name, e.g. 'RTX 4090' or RTX_4090")
    p.add_argument("--num-gpus", type=int, default=1)
    p.add_argument("--min-vram", type=float, help="GB of VRAM per GPU, at least")
    p.add_argument("--max-price", type=float, help="$/hour, at most (dph_total)")
    p.add_argument("--min-reliability", type=float, default=0.98)
    p.add_argument("--disk", type=float, help="GB of disk, at least")
    p.add_argument("--unverified", action="store_true", help="include unverified machines")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_offers)

    p = cmds.add_parser("create", parents=[common], help="rent an offer: a template hash or an image")
    add_api_args(p)
    p.add_argument("offer_id", type=int)
    p.add_argument("--template", help="template hash (template_hash_id), e.g. the SwarmUI template")
    p.add_argument("--image", help="docker image (ports: --port, default 7801)")
    p.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--port", type=int, action="append", help="container port to expose (repeatable)")
    p.add_argument("--disk", type=float, default=60, help="GB of disk (default 60)")
    p.add_argument("--onstart", help="on-start command")
    p.add_argument("--onstart-file", help="file holding the on-start script")
    p.add_argument("--runtype", default="args", help="args (keep the entrypoint), 'ssh_direc ssh_proxy', ...")
    p.add_argument("--label")
    p.add_argument("--max-hours", type=float, help="destroy it after this many hours")
    p.add_argument("--max-idle", type=duration_minutes, help="destroy it after SwarmUI is idle this long (30m, 1h)")
    p.add_argument("--guard-port", type=int, default=env_port, help="SwarmUI's port for --wait/--max-idle (7801)")
    p.add_argument("--guard-interval", type=float, default=60.0, help="seconds between guard checks (60)")
    p.add_argument("--no-guard-process", dest="guard_process", action="store_false",
                   help="only record the limits; enforce them with `gpuworker vast guard` yourself (cron)")
    p.add_argument("--wait", action="store_true", help="wait until SwarmUI answers and print its URL")
    add_wait_args(p)
    p.set_defaults(func=cmd_create)

    p = cmds.add_parser("wait", parents=[common], help="wait until an instance runs and SwarmUI answers")
    add_api_args(p)
    p.add_argument("instance_id", type=int)
    p.add_argument("--port", type=int, default=env_port)
    p.add_argument("--no-app-check", action="store_true", help="only wait for running + port mapped")
    add_wait_args(p)
    p.set_defaults(func=cmd_wait)

    p = cmds.add_parser("url", parents=[common], help="the http://ip:port URL of an instance's port")
    add_api_args(p)
    p.add_argument("instance_id", type=int)
    p.add_argument("--port", type=int, default=env_port)
    p.set_defaults(func=cmd_url)

    p = cmds.add_parser("destroy", parents=[common], help="destroy instances (billing stops)")
    add_api_args(p)
    p.add_argument("instance_ids", type=int, nargs="+")
    p.set_defaults(func=cmd_destroy)

    p = cmds.add_parser("guard", parents=[common],
                        help="destroy tracked instances past --max-hours/--max-idle (started by create)")
    add_api_args(p)
    p.add_argument("--instance", type=int, action="append", help="only this instance (repeatable)")
    p.add_argument("--once", action="store_true", help="one round, then exit (for cron)")
    p.add_argument("--interval", type=float, default=60.0)
    p.set_defaults(func=cmd_guard)
