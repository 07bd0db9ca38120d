"""common.processes: the one way the workers run children (own session, chunked output, TERM -> KILL,
an environment without secrets), and the trainer's children through it."""

from __future__ import annotations

import asyncio
import signal
import sys
import textwrap
import time

import pytest

from common import processes
from handlers.diffusion_pipe_trainer import captions
from tests.process_helpers import gone_within
from tests.trainer_fixtures import png


def test_child_env_drops_every_secret_unless_named():
    base = {"PATH": "/bin", "HF_TOKEN": "h", "GEMINI_API_KEY": "g", "RUNPOD_AI_API_KEY": "r",
            "AWS_REGION": "eu", "S3_ENDPOINT_URL": "http://s3", "RUNPOD_WEBHOOK_GET_JOB": "u",
            "SWARM_ACCESS_TOKEN": "t", "CIVITAI_API_KEY": "c", "PYTHONPATH": "/app"}
    assert processes.child_env(base=base) == {"PATH": "/bin", "PYTHONPATH": "/app"}
    kept = processes.child_env(["HF_TOKEN", "CIVITAI_API_KEY"], base=base)
    assert kept == {"PATH": "/bin", "PYTHONPATH": "/app", "HF_TOKEN": "h", "CIVITAI_API_KEY": "c"}


def test_splitter_passes_long_lines_cut_and_carriage_returns_as_line_ends():
    lines = []
    s = processes.LineSplitter(lambda line, cut: lines.append((line, cut)), keep=8, carriage_returns=True)
    for chunk in (b"short\nAAAA", b"AAAAAAAAAAAA", b"AAAA\nbar 1%\rbar 2%\r", b"tail"):
        s.feed(chunk)
    s.close()
    assert lines == [("short", False), ("AAAAAAAA", True), ("bar 1%", False), ("bar 2%", False), ("tail", False)]


def test_stop_terms_then_kills_the_whole_group(tmp_path):
    # the leader exits on SIGTERM; its child ignores SIGTERM and must be SIGKILLed after the grace period
    pidfile = tmp_path / "grandchild.pid"
    script = textwrap.dedent(f"""
        import signal, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
        open({str(pidfile)!r}, "w").write(str(child.pid))
        print("x" * 300000, flush=True)  # one line longer than any line reader's buffer
        print("ready", flush=True)
        time.sleep(60)
    """)

    async def scenario() -> float:
        proc = await processes.spawn([sys.executable, "-c", script], env=processes.child_env())
        lines = []
        reader = asyncio.create_task(processes.pump(proc.stdout, processes.LineSplitter(
            lambda line, cut: lines.append((len(line), cut)), keep=1000)))
        while not lines or lines[-1] != (5, False):
            await asyncio.sleep(0.05)
        assert lines == [(1000, True), (5, False)]
        started = time.monotonic()
        rc = await processes.stop(proc, grace_s=0.5)
        await reader
        assert rc == -signal.SIGTERM
        return time.monotonic() - started

    took = asyncio.run(scenario())
    assert 0.5 <= took < 5
    assert gone_within(int(pidfile.read_text()), 5)


FAKE_JOYCAPTION = """\
import json, os, sys
files = json.load(sys.stdin)
if os.environ.get("FAKE_JOYCAPTION_LONG_LINE"):
    print("loading weights " + "." * 200000, flush=True)
for f in files:
    print(json.dumps({"file": f, "caption": "key " + os.environ.get("GEMINI_API_KEY", "absent")}), flush=True)
"""


@pytest.fixture
def fake_joycaption(tmp_path, monkeypatch):
    """`sys.executable` as the trainer spawns JoyCaption with it: a script that captions with what it sees."""
    script = tmp_path / "fake_joycaption.py"
    script.write_text(FAKE_JOYCAPTION)
    exe = tmp_path / "python"
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} {script}\n")
    exe.chmod(0o755)
    monkeypatch.setattr(captions.sys, "executable", str(exe))
    img = tmp_path / "a.png"
    img.write_bytes(png(1))

    def run() -> list[str]:
        seen: list[str] = []
        asyncio.run(captions.caption_images(tmp_path, [img], prompt="p", trigger=None, max_new_tokens=4,
                                            on_caption=lambda p, c: seen.append(c), log_file=tmp_path / "jc.log"))
        return seen

    return run


def test_joycaption_child_gets_no_secrets(fake_joycaption, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "AIza-not-for-joycaption")
    assert fake_joycaption() == ["key absent"]
    monkeypatch.setenv("TRAINER_PASS_ENV", "GEMINI_API_KEY")  # named: passed on
    assert fake_joycaption() == ["key AIza-not-for-joycaption"]


def test_joycaption_output_line_of_any_length_is_read(fake_joycaption, monkeypatch):
    monkeypatch.setenv("FAKE_JOYCAPTION_LONG_LINE", "1")
    assert fake_joycaption() == ["key absent"]


def test_training_engine_gets_no_secrets_unless_named(monkeypatch):
    from handlers.diffusion_pipe_trainer import training

    monkeypatch.setenv("HF_TOKEN", "hf_x")
    monkeypatch.setenv("UPLOAD_S3_SECRET", "s")
    monkeypatch.delenv("TRAINER_PASS_ENV", raising=False)
    env = training.child_env([0])
    assert "HF_TOKEN" not in env and "UPLOAD_S3_SECRET" not in env and env["PYTHONUNBUFFERED"] == "1"
    monkeypatch.setenv("TRAINER_PASS_ENV", "HF_TOKEN")
    assert training.child_env([0])["HF_TOKEN"] == "hf_x"


def test_quick_tunnel_reads_past_a_long_line(tmp_path):
    from handlers.swarm_worker.tunnel import QuickTunnel

    cloudflared = tmp_path / "cloudflared"
    cloudflared.write_text(f"#!{sys.executable}\n" + textwrap.dedent("""
        import sys, time
        print("INF " + "x" * 200000, file=sys.stderr, flush=True)  # longer than a line reader's buffer
        print("INF |  https://long-line-tunnel.trycloudflare.com  |", file=sys.stderr, flush=True)
        time.sleep(60)
    """))
    cloudflared.chmod(0o755)

    async def go() -> str:
        tunnel = QuickTunnel(str(cloudflared), "http://127.0.0.1:7801", timeout=10)
        try:
            return await tunnel.start()
        finally:
            await tunnel.stop()

    assert asyncio.run(go()) == "https://long-line-tunnel.trycloudflare.com"
