"""The shared SwarmUI client (`common.swarmui`) against the SwarmUI stand-in run as a process."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from common.swarmui import (
    I2VParams,
    SwarmUIClient,
    SwarmUIError,
    SwarmUIUnavailable,
    SyncSwarmUIClient,
    T2IParams,
    decode_data_url,
    params_for,
)
from tests.fakes import swarmui as fake
from tests.fakes.threaded_http import free_port

ROOT = Path(__file__).resolve().parents[1]


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open")


def start_fake(tmp: Path, *, required_auth: str = "", bypass_ips: str | None = None,
               env: dict | None = None, backends_fds: str | None = None) -> tuple[subprocess.Popen, str]:
    models = tmp / "models"
    (models / "Stable-Diffusion" / "OfficialStableDiffusion").mkdir(parents=True, exist_ok=True)
    (models / "Stable-Diffusion" / "OfficialStableDiffusion" / "sd_xl_base_1.0.safetensors").write_bytes(b"x")
    (models / "diffusion_models" / "Wan").mkdir(parents=True, exist_ok=True)
    (models / "diffusion_models" / "Wan" / "wan2.2_i2v_high.safetensors").write_bytes(b"x")
    (models / "Lora").mkdir(exist_ok=True)
    (models / "Lora" / "style.safetensors").write_bytes(b"x")
    fake.write_settings(tmp / "Data", model_root=models, output_dir=tmp / "Output", required_auth=required_auth,
                        bypass_ips=bypass_ips)
    if backends_fds is not None:
        (tmp / "Data" / "Backends.fds").write_text(backends_fds)
    port = free_port()
    cmd = fake.launch_command().format(port=port, data_dir=tmp / "Data", settings_file=tmp / "Data/Settings.fds",
                                       backends_file=tmp / "Data/Backends.fds").split()
    env = {"FAKE_SWARMUI_WS_CLOSE_WAIT": "0.05", **(env or {})}
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("swarm")
    proc, url = start_fake(tmp)
    yield url, tmp
    proc.terminate()
    proc.wait(10)


def run(coro):
    return asyncio.run(coro)


def test_generate_over_websocket_and_http_with_view_paths(swarm):
    url, tmp = swarm

    async def go():
        events = []
        async with SwarmUIClient(url) as c:
            ws = await c.generate(T2IParams(prompt="a cat", model="OfficialStableDiffusion/sd_xl_base_1.0",
                                            steps=4, images=2, seed=3), on_event=events.append)
            http = await c.generate({"prompt": "a dog", "images": 1, "steps": 2}, websocket=False)
            data = await c.read_output(ws.outputs[0])
            saved = await c.save_output(http.outputs[0], tmp / "saved")
            return ws, http, events, data, saved

    ws, http, events, data, saved = run(go())
    assert len(ws.outputs) == 2 and all(o.startswith("View/local/raw/") for o in ws.outputs)
    assert ws.progress_events == 8 and ws.last_percent == 1.0
    assert any("gen_progress" in e for e in events) and any("status" in e for e in events)
    assert json.loads(ws.metadata[0])["sui_image_params"]["seed"] == 3
    assert data.startswith(b"\x89PNG")
    assert http.outputs[0].startswith("View/") and saved.read_bytes().startswith(b"\x89PNG")


def test_donotsave_returns_data_urls_and_i2v_params(swarm):
    url, _ = swarm
    init = "data:image/png;base64," + base64.b64encode(fake.tiny_png(1)).decode()
    params = I2VParams(prompt="zoom", model="OfficialStableDiffusion/sd_xl_base_1.0", initimage=init,
                       videomodel="Wan/wan2.2_i2v_high", videoframes=9, videosteps=3, videocfg=3.5, donotsave=True)
    assert params.to_body()["initimagecreativity"] == 0.0

    async def go():
        async with SwarmUIClient(url) as c:
            return await c.generate(params)

    result = run(go())
    mime, data = decode_data_url(result.outputs[0])
    assert mime == "video/mp4" and data[4:8] == b"ftyp"
    assert result.progress_events == 3


def test_errors_with_http_200_raise(swarm):
    url, _ = swarm

    async def go(websocket):
        async with SwarmUIClient(url) as c:
            await c.generate({"prompt": "x", "model": "missing/model"}, websocket=websocket)

    for websocket in (True, False):
        with pytest.raises(SwarmUIError, match="missing/model"):
            run(go(websocket))

    async def bad_subtype():
        async with SwarmUIClient(url) as c:
            await c.list_models("NoSuchType")

    with pytest.raises(SwarmUIError, match="sub-type"):
        run(bad_subtype())


def test_invalid_session_is_renewed_once(swarm):
    url, _ = swarm

    async def go():
        async with SwarmUIClient(url) as c:
            first = await c.session_id()
            c._session_id = "STALE"  # what a restarted SwarmUI makes of a cached id
            status = await c.current_status()
            after_http = await c.session_id()
            c._session_id = "STALE"
            gen = await c.generate({"prompt": "x", "steps": 1})
            return first, status, after_http, await c.session_id(), gen

    first, status, after_http, after_ws, gen = run(go())
    assert after_http not in (first, "STALE") and after_ws not in (after_http, "STALE")
    assert status["backend_status"]["status"] == "running"
    assert len(gen.outputs) == 1


def test_own_session_generation_is_interrupted_when_the_caller_gives_up(swarm):
    url, _ = swarm

    async def go():
        async with SwarmUIClient(url) as c:
            shared = await c.session_id()
            with pytest.raises(SwarmUIUnavailable) as err:  # 5 s of steps, 0.3 s of patience
                await c.generate({"prompt": "too slow", "steps": 500}, timeout=0.3, own_session=True)
            await asyncio.sleep(0.1)
            live = (await c.global_status())["status"]["live_gens"]
            return err.value, live, shared, await c.session_id()

    err, live, shared, after = run(go())
    assert "did not finish within 0.3 s" in str(err)
    assert live == 0  # interrupted in SwarmUI, not left running to the end
    assert after == shared  # the client's shared session was neither used nor replaced


def test_list_models_status_and_sync_wrapper(swarm):
    url, _ = swarm
    with SyncSwarmUIClient(url) as c:
        models = c.list_models()
        loras = c.list_models("LoRA")
        glob = c.global_status()
        backends = c.list_backends()
    assert "OfficialStableDiffusion/sd_xl_base_1.0.safetensors" in models.names
    assert "Wan/wan2.2_i2v_high.safetensors" in models.names
    assert loras.names == ["style.safetensors"]
    assert glob["status"] == {"waiting_gens": 0, "loading_models": 0, "waiting_backends": 0, "live_gens": 0}
    assert backends["0"]["status"] == "running"
    with SyncSwarmUIClient(url) as c:
        assert c.select_model("OfficialStableDiffusion/sd_xl_base_1.0")["success"] is True
        with pytest.raises(SwarmUIError, match="not found"):
            c.select_model("nope")
        assert c.interrupt_all()["success"] is True
        assert c.current_status()["status"]["live_gens"] == 0


def test_chunked_body_is_refused_by_the_stand_in(swarm):
    url, _ = swarm

    async def go():
        async def gen():
            yield b"{}"

        async with aiohttp.ClientSession() as s, s.post(f"{url}/API/GetNewSession", data=gen()) as r:
            return r.status, await r.json()

    status, body = run(go())
    assert status == 400 and body["error_id"] == "basic_api"


def test_required_authorization_and_loopback_bypass(tmp_path):
    # SwarmUI's default exempts loopback, which is everything behind an in-container proxy.
    proc, url = start_fake(tmp_path / "a", required_auth="Bearer internal-secret")
    proc2, url2 = start_fake(tmp_path / "b", required_auth="Bearer internal-secret", bypass_ips="")
    try:
        async def go():
            async with SwarmUIClient(url) as open_c:
                await open_c.session_id()
            async with SwarmUIClient(url2) as closed:
                with pytest.raises(SwarmUIError) as err:
                    await closed.session_id()
                assert err.value.status == 401
            async with SwarmUIClient(url2, token="internal-secret") as ok:
                return await ok.session_id()

        assert run(go())
    finally:
        for p in (proc, proc2):
            p.terminate()
            p.wait(10)


def test_unreachable_server_and_param_validation():
    async def go():
        async with SwarmUIClient(f"http://127.0.0.1:{free_port()}") as c:
            await c.current_status()

    with pytest.raises(SwarmUIUnavailable):
        run(go())
    with pytest.raises(ValueError, match="session_id"):
        params_for({"prompt": "x", "session_id": "abc"})
    with pytest.raises(ValueError, match="initimage"):
        params_for({"prompt": "x", "videomodel": "wan"})
    assert isinstance(params_for({"prompt": "x", "customparam": 5}), T2IParams)
    assert params_for({"prompt": "x", "customparam": 5}).to_body()["customparam"] == 5


def test_websocket_outputs_follow_batch_index_and_discard_indices(swarm):
    """SwarmUI sends flat image messages in the order images finish, then `discard_indices`."""
    url, _ = swarm

    async def go(prompt, websocket=True):
        events = []
        async with SwarmUIClient(url) as c:
            result = await c.generate({"prompt": prompt, "images": 3, "steps": 1, "seed": 10}, websocket=websocket,
                                      on_event=events.append)
        return result, events

    result, events = run(go("FAKE_OUT_OF_ORDER"))
    images = [e for e in events if "image" in e]
    assert [e["batch_index"] for e in images] == ["2", "1", "0"] and all(e["request_id"] for e in images)
    assert [json.loads(m)["sui_image_params"]["seed"] for m in result.metadata] == [10, 11, 12]
    tail = [next(iter(e)) for e in events[-4:]]
    assert tail == ["keep_alive", "discard_indices", "socket_intention", "status"]

    kept, _ = run(go("FAKE_DISCARD_FIRST"))
    assert len(kept.outputs) == 2 and [json.loads(m)["sui_image_params"]["seed"] for m in kept.metadata] == [11, 12]
    over_http, _ = run(go("FAKE_DISCARD_FIRST", websocket=False))
    assert len(over_http.outputs) == 2


def test_api_framework_errors_as_swarmui_answers_them(swarm):
    url, _ = swarm

    async def go():
        async with SwarmUIClient(url) as c:
            sid = await c.session_id()
        async with aiohttp.ClientSession() as s:
            async def post(route, **kw):
                async with s.post(f"{url}/API/{route}", allow_redirects=False, **kw) as r:
                    return r.status, (await r.json() if r.content_type == "application/json" else r.headers)

            return {
                "no_session": await post("ListBackends", json={}),
                "bad_route": await post("NoSuchRoute", json={"session_id": sid}),
                "bad_route_unknown_session": await post("NoSuchRoute", json={"session_id": "NOPE"}),
                "text_body": await post("ListBackends", data=json.dumps({"session_id": sid}),
                                        headers={"Content-Type": "text/plain"}),
                "ws_route_over_http": await post("GenerateText2ImageWS", json={"session_id": sid, "images": 1}),
                "backends": await post("ListBackends", json={"session_id": sid}),
            }, await s.get(f"{url}/API/ListBackends", allow_redirects=False)

    out, get = run(go())
    assert out["no_session"] == (400, {"error_id": "basic_api", "error": "missing session id"})
    assert out["bad_route"][0] == 400 and out["bad_route"][1]["error_id"] == "bad_route"
    assert out["bad_route_unknown_session"][0] == 401  # the session is checked before the route
    assert out["text_body"][0] == 400 and out["text_body"][1]["error_id"] == "basic_api"
    assert out["ws_route_over_http"][1]["error_id"] == "bad_request_method"
    assert get.status == 302 and get.headers["Location"] == "/Error/NoGetAPI"
    backend = out["backends"][1]["0"]
    for key in ("type", "status", "id", "settings", "modcount", "features", "enabled", "title", "max_usages",
                "seconds_since_used", "time_since_used", "can_load_models"):
        assert key in backend, key
    assert backend["type"] == "comfyui_selfstart" and backend["max_usages"] == 0


def test_sessions_survive_a_restart_in_the_same_data_folder(tmp_path):
    async def new_session(url):
        async with SwarmUIClient(url) as c:
            return await c.session_id()

    async def valid(url, sid):
        async with aiohttp.ClientSession() as s, s.post(f"{url}/API/GetCurrentStatus",
                                                        json={"session_id": sid}) as r:
            return r.status

    proc, url = start_fake(tmp_path)
    sid = run(new_session(url))
    proc.terminate()
    proc.wait(10)
    proc, url = start_fake(tmp_path)
    try:
        assert run(valid(url, sid)) == 200
    finally:
        proc.terminate()
        proc.wait(10)


def _backend_status(tmp: Path, backends_fds: str) -> str:
    proc, url = start_fake(tmp, backends_fds=backends_fds)
    try:
        with SyncSwarmUIClient(url) as c:
            return c.list_backends()["0"]["status"]
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize(("extra_args", "status"), [
    ('""', "errored"),  # FDS keeps the quotes: ComfyUI gets an empty argument and exits
    ("--bogus-flag", "errored"),
    ("--cpu", "running"),
    ("\\x", "running"),  # FDS's way to write an empty value
    (None, "running"),
])
def test_stand_in_refuses_comfyui_arguments_comfyui_would_refuse(tmp_path, extra_args, status):
    lines = ["0:", "\ttype: comfyui_selfstart", "\ttitle: ComfyUI", "\tenabled: true", "\tsettings:",
             "\t\tStartScript: dlbackend/ComfyUI/main.py"]
    if extra_args is not None:
        lines.append(f"\t\tExtraArgs: {extra_args}")
    assert _backend_status(tmp_path, "\n".join(lines) + "\n") == status


def test_fds_parsing_follows_frenetic_utilities():
    parsed = fake.parse_fds('a: ""\nb: x\\sy\\tz\nsec:\n\tc: \\x  padded\\x\n\td: 1\ne= aGk=\n# comment\n')
    assert parsed == {"a": '""', "b": "x\\y\tz", "sec": {"c": "  padded", "d": "1"}, "e": b"hi"}
    with pytest.raises(fake.FDSError, match="Spacing grew"):
        fake.parse_fds("a: 1\n\t\tb: 2\n")
    assert fake.dotnet_split_args('"" --port 5 "a b"') == ["", "--port", "5", "a b"]
