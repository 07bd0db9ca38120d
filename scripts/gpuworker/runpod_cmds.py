"""`gpuworker runpod ...`: submit jobs to a RunPod serverless endpoint and follow them."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from scripts.gpuworker.console import CliError, Console
from scripts.gpuworker.runpod_api import (
    Endpoint,
    api_key_from_env,
    clean_error,
    find_download_url,
    job_payload,
    progress_of,
)


def endpoint_from(args: argparse.Namespace) -> Endpoint:
    return Endpoint(args.endpoint, api_key=api_key_from_env(), base=args.base_url)


def read_input(args: argparse.Namespace) -> dict:
    """Request body from `--data` JSON, a file, or stdin (`--input -`); errors name the source."""
    if args.data is not None and args.input is not None:
        raise CliError("give either --input or --data, not both", 2)
    if args.data is not None:
        source, text = "--data", args.data
    elif args.input == "-":
        source, text = "stdin", sys.stdin.read()
    elif args.input is not None:
        path = Path(args.input)
        if not path.is_file():
            raise CliError(f"--input: {path} is not a file", 2)
        source, text = str(path), path.read_text()
    else:
        raise CliError("no job input: give --input FILE, --input - (stdin) or --data JSON", 2)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CliError(f"{source}: not valid JSON ({exc})", 2) from None
    if not isinstance(data, dict):
        raise CliError(f"{source}: the job input must be a JSON object", 2)
    return job_payload(data)


class JobWatcher:
    """Shows a job's progress updates as a bar and its streamed items as lines."""

    def __init__(self, console: Console, bar: Any):
        self.console = console
        self.bar = bar
        self.task = bar.add_task("queued", total=100, status="")
        self.last_state: str | None = None
        self.items: list[Any] = []
        self.updates: list[dict] = []

    def on_status(self, status: dict) -> None:
        state = status.get("status")
        if state != self.last_state:
            self.last_state = state
            self.bar.update(self.task, description=str(state).lower())
            if self.bar.disable:
                self.console.note(f"job {status.get('id', '')}: {state}")
        update = progress_of(status)
        if update is not None and update not in self.updates[-1:]:
            self.updates.append(update)
            percent = update.get("percent")
            stage, message = update.get("stage") or "running", update.get("message") or ""
            self.bar.update(self.task, description=str(stage),
                            completed=float(percent) if isinstance(percent, (int, float)) else None,
                            status=str(message)[:60])
            if self.bar.disable:
                shown = f"{percent:.0f}% " if isinstance(percent, (int, float)) else ""
                self.console.note(f"  [{stage}] {shown}{message}".rstrip())

    def on_item(self, item: Any) -> None:
        self.items.append(item)
        text = item if isinstance(item, str) else json.dumps(item, default=str)
        self.console.info(f"stream: {text}")


def follow(console: Console, endpoint: Endpoint, job_id: str, *, poll: float, timeout: float | None,
           stream: bool) -> dict:
    with console.progress() as bar:
        watcher = JobWatcher(console, bar)
        final = endpoint.follow(job_id, poll=poll, timeout=timeout, stream=stream,
                                on_status=watcher.on_status, on_item=watcher.on_item)
        if final.get("status") == "COMPLETED":
            bar.update(watcher.task, completed=100, description="completed", status="")
    if stream:
        final = {**final, "stream": watcher.items}
    return final


def report_final(console: Console, status: dict) -> int:
    """Print a finished (or still running) job; exit status 0 only for a successful completion."""
    state = status.get("status")
    output = status.get("output")
    summary: dict[str, Any] = dict(status)
    failed_output = isinstance(output, dict) and (output.get("error") or output.get("success") is False)
    if state == "FAILED" or failed_output:
        message = clean_error(status.get("error") if state == "FAILED" else output.get("error") or output)
        summary["error_message"] = message
    url = find_download_url(output)
    if url:
        summary["download_url"] = url
    lines = [f"job {status.get('id', '?')}: {state}"]
    timing = [f"{k} {status[k] / 1000:.1f}s" for k in ("delayTime", "executionTime")
              if isinstance(status.get(k), (int, float))]
    if timing:
        lines[0] += f" ({', '.join(timing)})"
    if "error_message" in summary:
        lines.append(f"error: {summary['error_message']}")
    elif output is not None and state == "COMPLETED":
        lines.append(json.dumps(output, indent=2, default=str))
    if url:
        lines.append(f"download: {url}")
    console.result(summary, "\n".join(lines))
    if state == "COMPLETED" and not failed_output:
        return 0
    return 1 if state in ("FAILED", "CANCELLED", "TIMED_OUT") or failed_output else 0


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    payload = read_input(args)
    endpoint = endpoint_from(args)
    job = endpoint.run(payload)
    job_id = job["id"]
    if not args.follow:
        console.result(job, f"job {job_id}: {job.get('status', 'IN_QUEUE')}\n"
                            f"follow it: gpuworker runpod stream {args.endpoint} {job_id}")
        return 0
    console.note(f"job {job_id} submitted")
    with console.left_running(still_running(args.endpoint, job_id)):
        final = follow(console, endpoint, job_id, poll=args.poll, timeout=args.timeout, stream=True)
    return report_final(console, final)


def still_running(endpoint_id: str, job_id: str) -> str:
    return (f"job {job_id} keeps running on RunPod: cancel it with `gpuworker runpod cancel {endpoint_id} {job_id}`, "
            f"or follow it again with `gpuworker runpod stream {endpoint_id} {job_id}`")


def cmd_runsync(args: argparse.Namespace, console: Console) -> int:
    payload = read_input(args)
    endpoint = endpoint_from(args)
    status = endpoint.runsync(payload, wait_ms=args.wait_ms)
    if status.get("status") not in ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT") and status.get("id"):
        console.note(f"job {status['id']} still {status.get('status')} when /runsync returned; following it")
        with console.left_running(still_running(args.endpoint, status["id"])):
            status = follow(console, endpoint, status["id"], poll=args.poll, timeout=args.timeout, stream=False)
    return report_final(console, status)


def cmd_status(args: argparse.Namespace, console: Console) -> int:
    endpoint = endpoint_from(args)
    if args.wait:
        return report_final(console, follow(console, endpoint, args.job_id, poll=args.poll, timeout=args.timeout,
                                            stream=False))
    status = endpoint.status(args.job_id)
    update = progress_of(status)
    if update is not None:
        percent = update.get("percent")
        text = (f"job {args.job_id}: IN_PROGRESS [{update.get('stage', '')}]"
                + (f" {percent:.0f}%" if isinstance(percent, (int, float)) else "")
                + (f" {update.get('message')}" if update.get("message") else ""))
        console.result(status, text)
        return 0
    return report_final(console, status)


def cmd_stream(args: argparse.Namespace, console: Console) -> int:
    endpoint = endpoint_from(args)
    with console.left_running(still_running(args.endpoint, args.job_id)):
        final = follow(console, endpoint, args.job_id, poll=args.poll, timeout=args.timeout, stream=True)
    return report_final(console, final)


def cmd_cancel(args: argparse.Namespace, console: Console) -> int:
    body = endpoint_from(args).cancel(args.job_id)
    console.result(body, f"job {args.job_id}: {body.get('status', 'cancel requested')}")
    return 0


def cmd_health(args: argparse.Namespace, console: Console) -> int:
    body = endpoint_from(args).health()
    jobs, workers = body.get("jobs") or {}, body.get("workers") or {}
    text = ("jobs:    " + ", ".join(f"{k} {v}" for k, v in jobs.items())
            + "\nworkers: " + ", ".join(f"{k} {v}" for k, v in workers.items()))
    console.result(body, text)
    return 0


def cmd_purge_queue(args: argparse.Namespace, console: Console) -> int:
    body = endpoint_from(args).purge_queue()
    console.result(body, f"removed {body.get('removed', 0)} queued job(s)")
    return 0


def add_endpoint_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("endpoint", help="RunPod endpoint id")
    p.add_argument("--base-url", help="API base (default: env RUNPOD_ENDPOINT_BASE_URL or https://api.runpod.ai/v2)")


def add_follow_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--poll", type=float, default=2.0, help="seconds between polls (default 2)")
    p.add_argument("--timeout", type=float, default=None, help="stop following after this many seconds")


def add_input_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--input", help="JSON file with the job input ({\"input\": ...} or the bare input); - = stdin")
    p.add_argument("-d", "--data", help="the job input as a JSON string")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    group = sub.add_parser("runpod", help="RunPod serverless endpoint jobs (key: env RUNPOD_API_KEY)")
    cmds = group.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = cmds.add_parser("run", parents=[common], help="submit a job (/run); --follow to watch it to the end")
    add_endpoint_args(p)
    add_input_args(p)
    p.add_argument("-f", "--follow", action="store_true", help="follow progress and stream until the job ends")
    add_follow_args(p)
    p.set_defaults(func=cmd_run)

    p = cmds.add_parser("runsync", parents=[common], help="run a job and wait for its result (/runsync)")
    add_endpoint_args(p)
    add_input_args(p)
    p.add_argument("--wait-ms", type=int, default=None, help="how long /runsync holds the request (1000-300000)")
    add_follow_args(p)
    p.set_defaults(func=cmd_runsync)

    p = cmds.add_parser("status", parents=[common], help="a job's status (--wait: until it ends)")
    add_endpoint_args(p)
    p.add_argument("job_id")
    p.add_argument("-w", "--wait", action="store_true")
    add_follow_args(p)
    p.set_defaults(func=cmd_status)

    p = cmds.add_parser("stream", parents=[common], help="follow a job live: progress, streamed output, result")
    add_endpoint_args(p)
    p.add_argument("job_id")
    add_follow_args(p)
    p.set_defaults(func=cmd_stream)

    p = cmds.add_parser("cancel", parents=[common], help="cancel a queued or running job")
    add_endpoint_args(p)
    p.add_argument("job_id")
    p.set_defaults(func=cmd_cancel)

    p = cmds.add_parser("health", parents=[common], help="the endpoint's job and worker counts")
    add_endpoint_args(p)
    p.set_defaults(func=cmd_health)

    p = cmds.add_parser("purge-queue", parents=[common], help="drop every queued (not running) job")
    add_endpoint_args(p)
    p.set_defaults(func=cmd_purge_queue)
