"""Benchmark: what unauthenticated requests cost a valid request through the swarm worker's gateway.

    python -m scripts.bench_swarm_gateway [--senders 4] [--requests 300] [--path-bytes 7000]

Starts the real gateway (handlers.swarm_worker.gateway) on its own event loop thread, as the
worker does, in front of a small JSON upstream, with logging configured as in production (the
redacting handler, here writing to /dev/null). Measures the median and p95 latency of valid
requests alone, then again while `--senders` processes post unauthenticated requests with a long
path (`http://` repeated, the worst case for the log redaction) as fast as they can, and prints both and their ratio.

With two or more cores the senders run on their own half of them, as remote senders would, so
the ratio is the gateway's cost of refusing them rather than the senders' CPU.

Measured on the shared 2-core machine (senders on one core, gateway and measurer on the other,
median of valid-request latency): a redacted log line per refusal, as before, 0.94 ms -> 36-43 ms
(39-43x); refusals counted, 0.90 ms -> 4.8-6.9 ms (5-8x). Before common.redaction's signed-URL
pattern was made linear, the per-refusal log line alone took the flood to 282 ms (332x).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TOKEN = "bench-token-0123456789abcdef0123456789"


def start_loop_thread(name: str) -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name=name, daemon=True).start()
    return loop


async def start_upstream(port: int):
    from aiohttp import web

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"session_id": "0" * 32})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def start_gateway(port: int, upstream_port: int):
    from handlers.swarm_worker.gateway import Gateway

    gw = Gateway(host="127.0.0.1", port=port, upstream=f"http://127.0.0.1:{upstream_port}",
                 upstream_secret=lambda: "internal", is_ready=lambda: True)
    gw.allow(TOKEN, "env")
    await gw.start()
    return gw


def sender(url: str, path_bytes: int, stop: multiprocessing.Event, cpus: set[int] | None) -> None:
    import requests

    if cpus:
        os.sched_setaffinity(0, cpus)

    # "http://" over and over: the signed-URL pattern of common.redaction backtracks quadratically on it
    path = "/API/" + ("http://" * (path_bytes // 7 + 1))[:path_bytes]
    with requests.Session() as s:
        while not stop.is_set():
            try:
                s.post(url + path, json={"prompt": "hello"}, timeout=10)
            except requests.RequestException:
                time.sleep(0.01)


def measure(url: str, n: int) -> list[float]:
    import requests

    times = []
    with requests.Session() as s:
        for _ in range(n):
            t = time.perf_counter()
            r = s.post(f"{url}/API/GetNewSession", json={}, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
            times.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200, r.text
    return times


def summary(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.95) - 1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--path-bytes", type=int, default=7000)
    args = parser.parse_args(argv)

    from common.processes import free_port
    from common.redaction import configure_logging

    real_stderr, sys.stderr = sys.stderr, open(os.devnull, "w")  # noqa: SIM115 - the log sink, as in production
    configure_logging("INFO")
    sys.stderr = real_stderr

    upstream_port, port = free_port(), free_port()
    upstream_loop = start_loop_thread("upstream")  # SwarmUI is another process: its own loop
    gateway_loop = start_loop_thread("swarm-runtime")
    asyncio.run_coroutine_threadsafe(start_upstream(upstream_port), upstream_loop).result(10)
    asyncio.run_coroutine_threadsafe(start_gateway(port, upstream_port), gateway_loop).result(10)
    url = f"http://127.0.0.1:{port}"

    measure(url, 20)  # warm-up
    base_med, base_p95 = summary(measure(url, args.requests))

    # With 2+ cores the senders get their own cores, as remote senders would: what is measured is then
    # the gateway's cost of refusing them, not the senders' CPU taken from the gateway.
    cpus = sorted(os.sched_getaffinity(0))
    sender_cpus = set(cpus[len(cpus) // 2:]) if len(cpus) > 1 else None
    if sender_cpus:
        os.sched_setaffinity(0, set(cpus[:len(cpus) // 2]))
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    procs = [ctx.Process(target=sender, args=(url, args.path_bytes, stop, sender_cpus), daemon=True)
             for _ in range(args.senders)]
    for p in procs:
        p.start()
    time.sleep(2.0)  # let the senders get going
    flood_med, flood_p95 = summary(measure(url, args.requests))
    stop.set()
    for p in procs:
        p.join(10)

    print(f"valid request alone:                          median {base_med:7.2f} ms   p95 {base_p95:7.2f} ms")
    print(f"with {args.senders} unauthenticated senders ({args.path_bytes} B paths): "
          f"median {flood_med:7.2f} ms   p95 {flood_p95:7.2f} ms")
    print(f"ratio (median): {flood_med / base_med:.1f}x   (p95): {flood_p95 / base_p95:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
