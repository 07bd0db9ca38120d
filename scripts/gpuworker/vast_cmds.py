"""`gpuworker vast ...`: rent a vast.ai GPU (SwarmUI template or any image), wait for it, find its
URL, list, stop, label, read logs of and destroy it, and guard it against forgotten billing."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import requests

from scripts.gpuworker import units
from scripts.gpuworker.console import CliError, Console
from scripts.gpuworker.http import MaybeCreated, OutageTolerance
from scripts.gpuworker.vast_api import (
    DEFAULT_DISK_GB,
    RUNNING,
    VastApi,
    api_key,
    instance_url,
    offer_query,
)
from scripts.gpuworker.vast_guard import GuardState, app_url, gate_hint, guard_round, swarm_post

REPO_ROOT = Path(__file__).resolve().parents[2]
SWARM_PORT = 7801


def api_from(args: argparse.Namespace) -> VastApi:
    return VastApi(api_key=api_key(), base=args.base_url)


def billing_hint(instance_id: int) -> str:
    return (f"instance {instance_id} keeps running (and billing): `gpuworker vast destroy {instance_id}`, "
            f"or `gpuworker vast wait {instance_id}`")


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


def positive_hours(text: str) -> float:
    try:
        hours = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of hours") from None
    if not hours > 0:
        raise argparse.ArgumentTypeError("must be more than 0 (to stop billing now: `gpuworker vast destroy ID`)")
    return hours


def cmd_offers(args: argparse.Namespace, console: Console) -> int:
    query = offer_query(gpu=args.gpu, num_gpus=args.num_gpus, min_vram_gb=args.min_vram, max_price=args.max_price,
                        min_reliability=args.min_reliability, disk_gb=args.disk, verified=not args.unverified,
                        limit=args.limit)
    offers = api_from(args).search_offers(query)
    rows = [f"{'offer':>10}  {'gpu':<14} {'n':>2} {'vram':>6} {'$/h':>7} {'rel':>6} {'disk':>7}  location"]
    for o in offers:
        rows.append(f"{o.get('id'):>10}  {str(o.get('gpu_name'))[:14]:<14} {o.get('num_gpus', 1):>2} "
                    f"{units.size_gb((o.get('gpu_ram') or 0) / 1000):>6} {o.get('dph_total', 0):>7.3f} "
                    f"{o.get('reliability', 0):>6.3f} {units.size_gb(o.get('disk_space') or 0):>7}  "
                    f"{o.get('geolocation', '')}")
    if not offers:
        rows = ["no offers match"]
    else:
        rows.append(f"($/h includes {units.size_gb(args.disk)} of disk, what `create` rents: pass the same --disk)")
    console.result(offers, "\n".join(rows))
    return 0


def launch_fields(args: argparse.Namespace) -> dict:
    """`runtype`/`onstart` as the vastai CLI sends them (vast.py:2353-2371, 2484-2519).

    vast's launch modes: `args` runs the image's own ENTRYPOINT, and there `onstart` *replaces* that
    entrypoint (the CLI sends `--entrypoint` as `onstart`); `ssh`/`jupyter` run vast's entrypoint
    (SSH/Jupyter) instead of the image's, then the `onstart` script. With a template nothing is
    sent that the user did not set, so the template's own launch mode and on-start script apply."""
    onstart = args.onstart
    if args.onstart_file:
        path = Path(args.onstart_file)
        if not path.is_file():
            raise CliError(f"--onstart-file: {path} is not a file", 2)
        onstart = path.read_text()
    if onstart and args.entrypoint:
        raise CliError("--entrypoint and --onstart: in vast's args mode the on-start command *is* the entrypoint; "
                       "give one of them", 2)
    if args.entrypoint:
        if args.runtype not in (None, "args"):
            raise CliError(f"--entrypoint needs the args launch mode, not --runtype {args.runtype!r}", 2)
        return {"runtype": "args", "onstart": args.entrypoint}
    if onstart and args.runtype == "args":
        raise CliError("--onstart with --runtype args would replace the image's ENTRYPOINT (vast runs the on-start "
                       "command as the entrypoint in args mode): use --runtype ssh to run it after vast's SSH "
                       "entrypoint, or --entrypoint to replace the entrypoint on purpose", 2)
    fields: dict = {}
    if args.runtype:
        fields["runtype"] = args.runtype
    elif not args.template:
        fields["runtype"] = "ssh" if onstart else "args"  # as the CLI: onstart -> ssh; else the image as is
    if onstart:
        fields["onstart"] = onstart
    return fields


def create_body(args: argparse.Namespace) -> dict:
    if not args.template and not args.image:
        raise CliError("create: give --template HASH or --image IMAGE", 2)
    env = parse_env(args.env)
    ports = args.port or ([SWARM_PORT] if not args.template else [])
    for port in ports:
        env[f"-p {port}:{port}"] = "1"
    body: dict = {"client_id": "me", "label": args.label or f"gpuworker-{time.strftime('%Y%m%d-%H%M%S')}"}
    if env:
        body["env"] = env
    if args.disk is not None or not args.template:
        body["disk"] = args.disk if args.disk is not None else DEFAULT_DISK_GB
    body.update(launch_fields(args))
    if args.template:
        body["template_hash_id"] = args.template
    if args.image:
        body["image"] = args.image
    return body


def template_summary(template: dict, body: dict) -> str:
    """What the instance will run: the template's values unless the request overrides them."""
    image = body.get("image") or f"{template.get('image')}:{template.get('tag') or 'latest'}"
    runtype = body.get("runtype") or template.get("runtype") or "args"
    disk = body.get("disk") or template.get("recommended_disk_space") or 8
    onstart = "yours" if "onstart" in body else ("the template's" if template.get("onstart") else "none")
    env = f"; your {len(body['env'])} env/port entries added (yours win)" if body.get("env") else ""
    return (f"template {template.get('name') or template.get('hash_id')}: image {image}, launch mode {runtype}, "
            f"disk {units.size_gb(float(disk))}, on-start script {onstart}{env}")


def start_guard_process(instance_id: int, base: str, interval: float) -> Path:
    """`gpuworker vast guard` for this instance, detached so it outlives the terminal."""
    log = GuardState().dir / f"guard-{instance_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        subprocess.Popen([sys.executable, "-m", "scripts.gpuworker", "vast", "guard", "--instance", str(instance_id),
                          "--base-url", base, "--interval", str(interval)], cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return log


def rent(console: Console, api: VastApi, offer_id: int, body: dict) -> int:
    """Create the instance. When vast.ai's answer is lost the rental may have gone through: look for
    the label, and if it is not there (yet), say so and how to find and destroy it."""
    try:
        return api.create_instance(offer_id, body)
    except MaybeCreated as exc:
        lost = exc.message
    console.note(f"{lost}; looking for an instance labelled {body['label']}")
    try:
        found = api.list_instances({"label": {"eq": body["label"]}})
    except CliError:
        found = []
    if len(found) == 1:
        console.note(f"vast.ai did rent it: instance {found[0]['id']}")
        return int(found[0]["id"])
    raise CliError(f"{lost}. An instance may have been rented anyway (and be billing): look for the label "
                   f"{body['label']} in `gpuworker vast list` and destroy it with `gpuworker vast destroy ID`",
                   label=body["label"], offer_id=offer_id)


def cmd_create(args: argparse.Namespace, console: Console) -> int:
    body = create_body(args)
    api = api_from(args)
    template = None
    if args.template:
        template = api.template(args.template)
        if template is None:
            raise CliError(f"--template: vast.ai has no template with hash {args.template}", 2)
        console.note(template_summary(template, body))
    elif body.get("runtype") == "ssh":
        console.note("launch mode ssh (an on-start script was given): vast's entrypoint starts SSH, then runs your "
                     "script; the image's own ENTRYPOINT does not run, so start it from the script")
    with console.left_running(f"the rental may have gone through (and be billing): look for the label {body['label']} "
                              "in `gpuworker vast list`", errors=False, label=body["label"], offer_id=args.offer_id):
        instance_id = rent(console, api, args.offer_id, body)
    result: dict = {"instance_id": instance_id, "offer_id": args.offer_id, "label": body["label"]}
    console.note(f"instance {instance_id} created from offer {args.offer_id} (label {body['label']})")
    with console.left_running(billing_hint(instance_id), instance_id=instance_id):
        if args.max_hours or args.max_idle:
            now = time.time()
            GuardState().add(instance_id, {"created_at": now, "last_active": now, "max_hours": args.max_hours,
                                           "max_idle_minutes": args.max_idle, "port": args.guard_port,
                                           "label": body["label"], "base": api.base})
            guard = {"max_hours": args.max_hours, "max_idle_minutes": args.max_idle, "state": str(GuardState().path)}
            if args.guard_process:
                guard["log"] = str(start_guard_process(instance_id, api.base, args.guard_interval))
            result["guard"] = guard
            limits = [units.duration(args.max_hours * 3600) if args.max_hours else "",
                      f"{units.duration(args.max_idle * 60)} of SwarmUI idling" if args.max_idle else ""]
            console.note("guard: destroyed after " + " or ".join(x for x in limits if x)
                         + (f"; log {guard['log']}" if "log" in guard else "; run `gpuworker vast guard` to enforce"))
        if args.wait:
            result["url"] = wait_ready(console, api, instance_id, port=args.guard_port, timeout=args.timeout,
                                       poll=args.poll, check_app=True)
    console.result(result, "\n".join([f"instance {instance_id}"] + ([f"url {result['url']}"] if "url" in result
                                                                      else [])))
    return 0


def swarm_answers(url: str) -> str | None:
    """The URL where SwarmUI hands out a session (`https://` when the port speaks TLS), else None. A
    401/403 (a token gate refusing this caller) or an untrusted certificate will not change by waiting."""
    try:
        resp, url = swarm_post(url, "/API/GetNewSession", {}, timeout=10)
    except requests.exceptions.SSLError:
        raise CliError(f"{url}: its TLS certificate is not trusted; point REQUESTS_CA_BUNDLE at vast's "
                       "Jupyter/instance certificate") from None
    except requests.RequestException:
        return None
    if resp.status_code in (401, 403):
        raise CliError(f"{url} {gate_hint(resp.status_code)}")
    try:
        return url if resp.status_code == 200 and resp.json().get("session_id") else None
    except (ValueError, AttributeError):
        return None


def wait_ready(console: Console, api: VastApi, instance_id: int, *, port: int, timeout: float, poll: float,
               check_app: bool) -> str:
    """Poll until the instance runs, its port is mapped and (with `check_app`) SwarmUI answers there."""
    deadline = time.monotonic() + timeout
    last = None
    with console.progress() as bar:
        task = bar.add_task(f"instance {instance_id}", total=None, status="")
        outage = OutageTolerance()
        while True:
            reply = outage.call(lambda: [api.show_instance(instance_id)])
            if reply is None:  # vast.ai unreachable for now: poll again
                time.sleep(poll)
                continue
            info = reply[0]
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
            if url:
                answered = swarm_answers(url) if check_app else url
                if answered:
                    return answered
            if time.monotonic() >= deadline:
                raise CliError(f"instance {instance_id} not ready after {units.duration(timeout)} (last: {phase})", 3)
            time.sleep(poll)


def cmd_wait(args: argparse.Namespace, console: Console) -> int:
    with console.left_running(billing_hint(args.instance_id), instance_id=args.instance_id):
        url = wait_ready(console, api_from(args), args.instance_id, port=args.port, timeout=args.timeout,
                         poll=args.poll, check_app=not args.no_app_check)
    console.result({"instance_id": args.instance_id, "url": url}, url)
    return 0


def cmd_url(args: argparse.Namespace, console: Console) -> int:
    info = api_from(args).show_instance(args.instance_id)
    if info is None:
        raise CliError(f"instance {args.instance_id} does not exist", instance_id=args.instance_id)
    url = instance_url(info, args.port)
    if url is None:
        raise CliError(f"instance {args.instance_id} has no mapping for port {args.port} yet "
                       f"(status: {info.get('actual_status') or 'creating'})", instance_id=args.instance_id)
    try:
        url = app_url(url, timeout=10)  # https:// when the port speaks TLS
    except requests.RequestException:
        pass  # nothing answers there yet: the mapping is all there is to say
    console.result({"instance_id": args.instance_id, "url": url, "status": info.get("actual_status")}, url)
    return 0


def destroy_one(api: VastApi, instance_id: int, tracked: bool) -> dict:
    """Destroyed only on vast's `success: true`, or when a later look finds it gone and this tool knew it
    existed (it tracked it); a mistyped id is an error, never "already gone"."""
    try:
        ok, msg = api.destroy_instance(instance_id)
    except CliError as exc:
        ok, msg = False, exc.message
    if ok:
        return {"instance_id": instance_id, "destroyed": True, "already_gone": False}
    try:
        still_there = api.show_instance(instance_id) is not None
    except CliError:
        still_there = True
    if not still_there and tracked:
        return {"instance_id": instance_id, "destroyed": True, "already_gone": True}
    if not still_there:
        return {"instance_id": instance_id, "destroyed": False,
                "error": f"no instance {instance_id} in your vast.ai account (a mistyped id, or destroyed earlier)"}
    return {"instance_id": instance_id, "destroyed": False,
            "error": f"vast.ai did not destroy instance {instance_id}: {msg}; it is still billing"}


def cmd_destroy(args: argparse.Namespace, console: Console) -> int:
    api = api_from(args)
    results = []
    for instance_id in args.instance_ids:
        r = destroy_one(api, instance_id, tracked=str(instance_id) in GuardState().read())
        if r["destroyed"]:
            GuardState().remove(instance_id)
        results.append(r)
    failed = [r for r in results if not r["destroyed"]]
    lines = [f"instance {r['instance_id']}: " + ("already gone" if r.get("already_gone") else "destroyed")
             for r in results if r["destroyed"]]
    if not failed:
        console.result(results, "\n".join(lines))
        return 0
    for line in lines:
        console.info(line)
    raise CliError("; ".join(r["error"] for r in failed), results=results)


def cmd_list(args: argparse.Namespace, console: Console) -> int:
    rows = api_from(args).list_instances()
    now = time.time()
    out = [{"id": r.get("id"), "label": r.get("label"), "status": r.get("actual_status"),
            "dph_total": r.get("dph_total"), "gpu_name": r.get("gpu_name"),
            "age_seconds": round(now - float(r["start_date"])) if r.get("start_date") else None} for r in rows]
    lines = [f"{'id':>10}  {'status':<9} {'$/h':>7} {'age':>10}  {'gpu':<12} label"]
    for r in out:
        age = units.duration(r["age_seconds"]) if r["age_seconds"] is not None else "-"
        lines.append(f"{r['id']:>10}  {str(r['status'] or 'creating'):<9} {float(r['dph_total'] or 0):>7.3f} "
                     f"{age:>10}  {str(r['gpu_name'] or '')[:12]:<12} {r['label'] or ''}")
    console.result(out, "\n".join(lines) if out else "no instances")
    return 0


def cmd_stop(args: argparse.Namespace, console: Console) -> int:
    api_from(args).manage(args.instance_id, {"state": "stopped"})
    console.result({"instance_id": args.instance_id, "state": "stopped"},
                   f"instance {args.instance_id}: stopping (its disk still bills; `gpuworker vast destroy "
                   f"{args.instance_id}` stops all billing)")
    return 0


def cmd_label(args: argparse.Namespace, console: Console) -> int:
    api_from(args).manage(args.instance_id, {"label": args.label})
    with GuardState().edit() as data:
        if str(args.instance_id) in data:
            data[str(args.instance_id)]["label"] = args.label
    console.result({"instance_id": args.instance_id, "label": args.label},
                   f"instance {args.instance_id}: label {args.label}")
    return 0


def cmd_logs(args: argparse.Namespace, console: Console) -> int:
    text = api_from(args).logs(args.instance_id, tail=args.tail, grep=args.grep, timeout=args.timeout)
    console.result({"instance_id": args.instance_id, "logs": text}, text.rstrip("\n"))
    return 0


def cmd_guard(args: argparse.Namespace, console: Console) -> int:
    api = api_from(args)
    state = GuardState()
    ids = args.instance or None
    history: list[dict] = []
    notes: dict[int, str] = {}
    while True:
        results = guard_round(api, state, ids)
        for r in results:
            note = r.get("reason") if r["action"] != "keep" else r.get("note")
            if note and notes.get(r["id"]) != f"{r['action']} {note}":
                notes[r["id"]] = f"{r['action']} {note}"
                console.note(f"{time.strftime('%H:%M:%S')} instance {r['id']}: {r['action']} ({note})")
        history.extend(r for r in results if r["action"] != "keep")
        remaining = [k for k in state.read() if not ids or int(k) in ids]
        if args.once or not remaining:
            break
        time.sleep(args.interval)
    shown = results if args.once else history
    console.result(shown, "\n".join(f"instance {r['id']}: {r['action']}"
                                    + (f" ({r.get('reason') or r.get('note')})" if r.get("reason") or r.get("note")
                                       else "") for r in shown) or "nothing to guard")
    return 0


def add_api_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-url", help="vast.ai server (default: env VAST_URL or https://console.vast.ai)")


def add_wait_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, default=1200, help="seconds to wait (default 1200)")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between checks (default 5)")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    group = sub.add_parser("vast", help="vast.ai instances (key: env VAST_API_KEY or vastai's key file)")
    cmds = group.add_subparsers(dest="command", required=True, metavar="COMMAND")
    env_port = int(os.environ.get("SWARM_PUBLIC_PORT", SWARM_PORT))
    disk_default = f"{DEFAULT_DISK_GB:g}"

    p = cmds.add_parser("offers", parents=[common], help="search rentable GPUs, cheapest first")
    add_api_args(p)
    p.add_argument("--gpu", help="GPU name, e.g. 'RTX 4090' or RTX_4090")
    p.add_argument("--num-gpus", type=int, default=1, help="GPUs per offer (default 1)")
    p.add_argument("--min-vram", type=float, help="GB of VRAM per GPU, at least")
    p.add_argument("--max-price", type=float, help="$/hour, at most, disk included (dph_total)")
    p.add_argument("--min-reliability", type=float, default=0.98, help="machine reliability, at least (default 0.98)")
    p.add_argument("--disk", type=float, default=DEFAULT_DISK_GB,
                   help=f"GB of disk to rent: offers must have it, and $/h includes it (default {disk_default}, "
                        "what `create --image` rents)")
    p.add_argument("--unverified", action="store_true", help="include unverified machines (default: verified only)")
    p.add_argument("--limit", type=int, default=20, help="at most this many offers (default 20)")
    p.set_defaults(func=cmd_offers)

    p = cmds.add_parser("create", parents=[common], help="rent an offer: a template hash or an image")
    add_api_args(p)
    p.add_argument("offer_id", type=int)
    p.add_argument("--template", help="template hash (template_hash_id), e.g. the SwarmUI template; its image, "
                                      "launch mode, disk and on-start script apply unless you set them here")
    p.add_argument("--image", help=f"docker image (ports: --port, default {SWARM_PORT})")
    p.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment variable (repeatable; added to a template's, yours win)")
    p.add_argument("--port", type=int, action="append", help="container port to expose (repeatable)")
    p.add_argument("--disk", type=float, help=f"GB of disk (default: {disk_default} for --image, the template's "
                                              "recommended size for --template)")
    p.add_argument("--onstart", help="on-start script, run by vast's entrypoint after SSH is up (launch mode ssh, "
                                     "the image's ENTRYPOINT does not run)")
    p.add_argument("--onstart-file", help="file holding the on-start script (as --onstart)")
    p.add_argument("--entrypoint", help="args launch mode: run this instead of the image's ENTRYPOINT")
    p.add_argument("--runtype", help="launch mode: args (the image's ENTRYPOINT runs; default for --image without "
                                     "an on-start script), ssh, 'ssh_direc ssh_proxy', 'jupyter_proxy ssh_proxy'; "
                                     "default for --template: the template's")
    p.add_argument("--label", help="instance label (default gpuworker-<date>-<time>)")
    p.add_argument("--max-hours", type=positive_hours, help="destroy it after this many hours")
    p.add_argument("--max-idle", type=duration_minutes, help="destroy it after SwarmUI has said it is idle this long (30m, 1h); "
                                                                 "one it cannot see into is kept")
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

    p = cmds.add_parser("list", parents=[common], help="your instances: id, status, $/h, age, label")
    add_api_args(p)
    p.set_defaults(func=cmd_list)

    p = cmds.add_parser("logs", parents=[common], help="an instance's container logs")
    add_api_args(p)
    p.add_argument("instance_id", type=int)
    p.add_argument("--tail", type=int, help="only the last N lines")
    p.add_argument("--grep", help="only lines containing this")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for vast.ai to upload them (30)")
    p.set_defaults(func=cmd_logs)

    p = cmds.add_parser("stop", parents=[common], help="stop an instance (GPU billing stops, disk billing goes on)")
    add_api_args(p)
    p.add_argument("instance_id", type=int)
    p.set_defaults(func=cmd_stop)

    p = cmds.add_parser("label", parents=[common], help="set an instance's label")
    add_api_args(p)
    p.add_argument("instance_id", type=int)
    p.add_argument("label")
    p.set_defaults(func=cmd_label)

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
