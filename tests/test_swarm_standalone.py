"""vast.ai / pod mode through the image's start script: SwarmUI stand-in + gateway + tunnel + manifest."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.jobs import JobError
from common.swarmui import SwarmUIClient
from handlers.swarm_worker.manifest import load_manifest
from tests.fakes.http_files import FileServer, Route
from tests.swarm_helpers import ROOT, running_commands, worker_env

START = ROOT / "images" / "swarm-worker" / "start.sh"
FAKE_CLOUDFLARED = """#!{python}
import signal, sys, time
with open(sys.argv[0] + ".args", "w") as fh:
    fh.write(" ".join(sys.argv[1:]))
print("2026-01-01T00:00:00Z INF Requesting new quick Tunnel on trycloudflare.com...", file=sys.stderr, flush=True)
print("2026-01-01T00:00:01Z INF |  https://brave-words-fake-tunnel.trycloudflare.com  |", file=sys.stderr, flush=True)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
while True:
    time.sleep(0.2)
"""


@pytest.fixture()
def model_server():
    payload = os.urandom(300_000)
    with FileServer() as server:
        server.add("/wan22_high.gguf", Route(payload))
        yield server.url(""), hashlib.sha256(payload).hexdigest(), payload


def _run_start_script(env: dict, url_file: Path, timeout: float = 40) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen(["bash", str(START)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if line.startswith("SWARM_PUBLIC_URL="):
            return proc, lines
    proc.kill()
    raise AssertionError("start script printed no URL:\n" + "\n".join(lines))


def test_start_script_runs_swarmui_gateway_tunnel_and_fetches_models(tmp_path, model_server):
    base_url, sha, payload = model_server
    cloudflared = tmp_path / "cloudflared"
    cloudflared.write_text(FAKE_CLOUDFLARED.format(python=sys.executable))
    cloudflared.chmod(0o755)
    url_file = tmp_path / "url.txt"
    token = "vast-template-token-0123456789abcdef"
    manifest = f'[{{"url": "{base_url}/wan22_high.gguf", "folder": "diffusion_models/Wan", "sha256": "{sha}"}}]'
    env = {**os.environ, **worker_env(tmp_path), "APP_DIR": str(ROOT), "PYTHON": sys.executable,
           "SWARM_TUNNEL": "cloudflared", "SWARM_CLOUDFLARED_BIN": str(cloudflared), "SWARM_URL_FILE": str(url_file),
           "SWARM_ACCESS_TOKEN": token, "SWARM_MODEL_MANIFEST": manifest, "ALLOW_PRIVATE_DOWNLOADS": "1"}
    env.pop("RUNPOD_WEBHOOK_GET_JOB", None)
    model_root = Path(env["SWARMUI_MODEL_ROOT"])
    proc, lines = _run_start_script(env, url_file)
    try:
        assert lines[-1] == "SWARM_PUBLIC_URL=https://brave-words-fake-tunnel.trycloudflare.com/t/<SWARM_ACCESS_TOKEN>"
        assert token not in "\n".join(lines)
        assert url_file.read_text().strip() == f"https://brave-words-fake-tunnel.trycloudflare.com/t/{token}"
        assert (tmp_path / "cloudflared.args").read_text() == (
            f"tunnel --no-autoupdate --url http://127.0.0.1:{env['SWARM_PUBLIC_PORT']}")
        fetched = model_root / "diffusion_models" / "Wan" / "wan22_high.gguf"
        assert fetched.read_bytes() == payload

        async def through_gateway():
            async with SwarmUIClient(f"http://127.0.0.1:{env['SWARM_PUBLIC_PORT']}/t/{token}") as c:
                models = await c.list_models()
                gen = await c.generate({"prompt": "vast", "steps": 2, "model": "Wan/wan22_high"})
                return models.names, gen

        names, gen = asyncio.run(through_gateway())
        assert "Wan/wan22_high.gguf" in names and gen.outputs
    finally:
        proc.terminate()
        assert proc.wait(20) == 0
    # SwarmUI and the tunnel went with it
    assert not any(f"--port {env['SWARMUI_INTERNAL_PORT']}" in p for p in running_commands())
    # a second start skips what is present
    fetched_mtime = fetched.stat().st_mtime_ns
    proc, lines = _run_start_script(env, url_file)
    proc.terminate()
    proc.wait(20)
    assert fetched.stat().st_mtime_ns == fetched_mtime
    assert any("model present, skipped" in line for line in lines)


def test_bad_manifest_stops_before_starting(tmp_path):
    env = {**os.environ, **worker_env(tmp_path), "APP_DIR": str(ROOT), "PYTHON": sys.executable,
           "SWARM_TUNNEL": "none", "SWARM_MODEL_MANIFEST": '[{"url": "https://x/y.gguf", "folder": "../etc"}]'}
    env.pop("RUNPOD_WEBHOOK_GET_JOB", None)
    out = subprocess.run(["bash", str(START)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "[0].folder: Value error" not in out.stderr and "models[0].folder: must be a relative path" in out.stderr


def test_check_mode_for_the_image_build(tmp_path):
    env = {**os.environ, **worker_env(tmp_path), "SWARM_TUNNEL": "cloudflared"}  # ignored by --check
    ok = subprocess.run([sys.executable, "-m", "handlers.swarm_worker.standalone", "--check"], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "SwarmUI came up" in ok.stderr and "SWARM_PUBLIC_URL" not in ok.stdout
    env["FAKE_SWARMUI_FAIL_START"] = "1"
    bad = subprocess.run([sys.executable, "-m", "handlers.swarm_worker.standalone", "--check"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "simulated startup failure" in bad.stderr


def test_manifest_forms():
    entries = load_manifest('{"models": [{"url": "https://h/x/a%20b.safetensors", "folder": "Lora"}]}')
    assert entries[0].target(Path("/m")) == Path("/m/Lora/a b.safetensors")
    with pytest.raises(JobError, match="neither JSON nor a file"):
        load_manifest("/no/such/manifest.json")
    with pytest.raises(JobError, match=r"models\[0\]\.sha256"):
        load_manifest('[{"url": "https://h/a.gguf", "folder": "x", "sha256": "zz"}]')


# -- what HartsyAI's CloudBackends sets on the pods and instances it creates -----------------------------------------


def test_cloudbackends_instance_token_port_and_tls(tmp_path):
    """A vast.ai instance as CloudBackends creates it: SWARMUI_WORKER_TOKEN, SWARMUI_PUBLIC_PORT/HOST,
    and HTTPS with the instance's certificate (its UseTls default), spoken to with a Bearer token."""
    import aiohttp

    from tests.tls_helpers import client_context, self_signed_cert

    cert, key = self_signed_cert(tmp_path / "tls")
    token = "cloudbackends-injected-token-0123456789abcdef"
    env = {**os.environ, **worker_env(tmp_path), "APP_DIR": str(ROOT), "PYTHON": sys.executable,
           "SWARM_TUNNEL": "none", "SWARM_URL_FILE": str(tmp_path / "url.txt"), "SWARMUI_WORKER_TOKEN": token,
           "SWARMUI_TLS_CERT": str(cert), "SWARMUI_TLS_KEY": str(key), "PUBLIC_IPADDR": "127.0.0.1"}
    port = env.pop("SWARM_PUBLIC_PORT")
    env.update(SWARMUI_PUBLIC_PORT=port, SWARMUI_PUBLIC_HOST=env.pop("SWARM_PUBLIC_HOST"),
               **{f"VAST_TCP_PORT_{port}": port})
    for name in ("RUNPOD_WEBHOOK_GET_JOB", "RUNPOD_POD_ID", "SWARM_ACCESS_TOKEN"):
        env.pop(name, None)
    proc, lines = _run_start_script(env, tmp_path / "url.txt")
    try:
        assert lines[-1] == f"SWARM_PUBLIC_URL=https://127.0.0.1:{port}/t/<SWARM_ACCESS_TOKEN>"
        assert token not in "\n".join(lines)

        async def go():
            connector = aiohttp.TCPConnector(ssl=client_context(cert))
            async with aiohttp.ClientSession(connector=connector) as s:
                async with s.post(f"https://127.0.0.1:{port}/API/GetNewSession", json={},
                                  headers={"Authorization": f"Bearer {token}"}) as r:
                    ok = r.status
                async with s.post(f"https://127.0.0.1:{port}/API/GetNewSession", json={}) as r:
                    refused = r.status
                async with SwarmUIClient(f"https://127.0.0.1:{port}", token=token, session=s) as c:
                    gen = await c.generate({"prompt": "over tls", "steps": 2})  # WebSocket over wss
            async with aiohttp.ClientSession() as s:
                try:
                    async with s.post(f"http://127.0.0.1:{port}/API/GetNewSession", json={}) as r:
                        plain = r.status
                except aiohttp.ClientError:
                    plain = "refused"
            return ok, refused, gen, plain

        ok, refused, gen, plain = asyncio.run(go())
        assert (ok, refused) == (200, 401) and gen.outputs and plain != 200
    finally:
        proc.terminate()
        assert proc.wait(20) == 0


def test_token_port_and_tls_settings(tmp_path, monkeypatch):
    from handlers.swarm_worker import config
    from handlers.swarm_worker.config import WorkerConfig
    from tests.tls_helpers import self_signed_cert

    for name in ("SWARM_ACCESS_TOKEN", "SWARMUI_WORKER_TOKEN", "SWARM_PUBLIC_PORT", "SWARMUI_PUBLIC_PORT",
                 "SWARM_PUBLIC_HOST", "SWARMUI_PUBLIC_HOST", "SWARMUI_TLS_CERT", "SWARMUI_TLS_KEY", "SWARMUI_TLS",
                 "SWARM_PUBLIC_URL", "RUNPOD_POD_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(config, "VAST_INSTANCE_CERT", tmp_path / "none.crt")
    monkeypatch.setattr(config, "VAST_INSTANCE_KEY", tmp_path / "none.key")
    monkeypatch.setenv("SWARMUI_WORKER_TOKEN", "w" * 16)
    monkeypatch.setenv("SWARMUI_PUBLIC_PORT", "7911")
    monkeypatch.setenv("SWARMUI_PUBLIC_HOST", "127.0.0.1")
    cfg = WorkerConfig.from_env()
    assert (cfg.access_token, cfg.public_port, cfg.public_host) == ("w" * 16, 7911, "127.0.0.1")
    assert cfg.server_ssl_context() is None and cfg.public_base_url() == "http://127.0.0.1:7911"
    monkeypatch.setenv("SWARM_ACCESS_TOKEN", "w" * 16)  # the same value under both names is fine
    assert WorkerConfig.from_env().access_token == "w" * 16
    for name, value, message in [
            ("SWARM_ACCESS_TOKEN", "a" * 20, "SWARM_ACCESS_TOKEN and SWARMUI_WORKER_TOKEN"),
            ("SWARM_PUBLIC_PORT", "7912", "SWARM_PUBLIC_PORT and SWARMUI_PUBLIC_PORT"),
            ("SWARMUI_PUBLIC_PORT", "http", r"SWARM_PUBLIC_PORT \(SWARMUI_PUBLIC_PORT\): expected a port number"),
            ("SWARMUI_TLS_CERT", str(tmp_path / "x.crt"), "SWARMUI_TLS_CERT and SWARMUI_TLS_KEY: set both")]:
        with monkeypatch.context() as m:
            m.setenv(name, value)
            with pytest.raises(ValueError, match=message):
                WorkerConfig.from_env()
    monkeypatch.delenv("SWARM_ACCESS_TOKEN")
    monkeypatch.setenv("SWARMUI_WORKER_TOKEN", "short")
    with pytest.raises(ValueError, match="SWARMUI_WORKER_TOKEN: must be at least 16 characters"):
        WorkerConfig.from_env()
    monkeypatch.setenv("SWARMUI_WORKER_TOKEN", "w" * 16)
    # vast.ai's instance certificate is used when present (CloudBackends' UseTls), unless SWARMUI_TLS=off
    cert, key = self_signed_cert(tmp_path / "etc")
    monkeypatch.setattr(config, "VAST_INSTANCE_CERT", cert)
    monkeypatch.setattr(config, "VAST_INSTANCE_KEY", key)
    cfg = WorkerConfig.from_env()
    assert cfg.tls_cert == cert and cfg.server_ssl_context() is not None
    assert cfg.public_base_url() == "https://127.0.0.1:7911"
    monkeypatch.setenv("SWARMUI_TLS", "off")
    assert WorkerConfig.from_env().tls_cert is None
    monkeypatch.setenv("SWARMUI_TLS_CERT", str(key))  # the key where the certificate should be
    monkeypatch.setenv("SWARMUI_TLS_KEY", str(key))
    with pytest.raises(ValueError, match="do not load"):
        WorkerConfig.from_env()


def test_tunnel_to_a_tls_gateway_skips_verifying_its_public_certificate(tmp_path):
    from handlers.swarm_worker.tunnel import QuickTunnel

    cloudflared = tmp_path / "cloudflared"
    cloudflared.write_text(FAKE_CLOUDFLARED.format(python=sys.executable))
    cloudflared.chmod(0o755)

    async def go():
        tunnel = QuickTunnel(str(cloudflared), "https://127.0.0.1:7801", timeout=20)
        try:
            return await tunnel.start()
        finally:
            await tunnel.stop()

    assert asyncio.run(go()) == "https://brave-words-fake-tunnel.trycloudflare.com"
    assert (tmp_path / "cloudflared.args").read_text() == (
        "tunnel --no-autoupdate --url https://127.0.0.1:7801 --no-tls-verify")
