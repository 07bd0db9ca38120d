"""The worker's gateway in front of the SwarmUI stand-in: tokens, WebSockets, streaming, legacy rewrite."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import time

import aiohttp
import pytest

from common.swarmui import SwarmUIClient, SwarmUIError
from tests.swarm_helpers import call, configured_worker

TOKEN = "env-token-for-gateway-tests-0123456789"


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gateway")
    with configured_worker(tmp, SWARM_ACCESS_TOKEN=TOKEN) as env:
        assert call({"action": "ready"})["ready"] is True
        yield f"http://127.0.0.1:{env['SWARM_PUBLIC_PORT']}", env, tmp


def runtime():
    from handlers.swarm_worker.runtime import get_runtime

    return get_runtime()


async def _post(url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.post(url, json=body or {}, headers=headers or {}) as r:
        return r.status, await r.json(content_type=None)


def test_token_in_header_or_path_and_refusals(gw):
    base, _, _ = gw
    ok_header = asyncio.run(_post(f"{base}/API/GetNewSession", headers={"Authorization": f"Bearer {TOKEN}"}))
    ok_path = asyncio.run(_post(f"{base}/t/{TOKEN}/API/GetNewSession"))
    assert ok_header[0] == 200 and ok_header[1]["session_id"]
    assert ok_path[0] == 200 and ok_path[1]["session_id"]
    for url, headers in [(f"{base}/API/GetNewSession", {}),
                         (f"{base}/API/GetNewSession", {"Authorization": "Bearer wrong-token"}),
                         (f"{base}/API/GetNewSession", {"Authorization": TOKEN}),  # not a Bearer value
                         (f"{base}/t/wrong-token/API/GetNewSession", {}),
                         (f"{base}/t/{TOKEN[:-1]}/API/GetNewSession", {})]:
        status, body = asyncio.run(_post(url, headers=headers))
        assert (status, body["error_id"]) == (401, "worker_unauthorized"), url


def test_forwarded_headers_are_stripped_and_credentials_replaced(gw):
    base, env, _ = gw
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Forwarded-For": "1.2.3.4", "X-Forwarded-Host": "evil",
               "Forwarded": "for=1.2.3.4", "X-Custom": "kept"}
    assert asyncio.run(_post(f"{base}/API/GetNewSession", headers=headers))[0] == 200

    async def seen():
        async with aiohttp.ClientSession() as s, s.get(
                f"http://127.0.0.1:{env['SWARMUI_INTERNAL_PORT']}/__fake__/requests") as r:
            return await r.json()

    last = [r for r in asyncio.run(seen()) if r["path"] == "/API/GetNewSession"][-1]
    names = {k.lower() for k in last["headers"]}
    assert not any(n.startswith("x-forwarded") or n == "forwarded" for n in names)
    assert last["headers"]["X-Custom"] == "kept"
    assert last["headers"]["Authorization"] == f"Bearer {runtime().process.internal_secret}"
    assert TOKEN not in str(last["headers"])


def test_browser_entry_sets_a_cookie_for_the_web_ui(gw):
    base, env, _ = gw

    async def go():
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{base}/t/{TOKEN}", allow_redirects=False) as r:
                assert r.status == 302 and r.headers["Location"] == "/"
                cookie = r.cookies["swarm_worker_token"]
                assert cookie.value == TOKEN and cookie["httponly"] and cookie["samesite"] == "Lax"
            async with s.get(f"{base}/", headers={"Cookie": f"other=1; swarm_worker_token={TOKEN}"}) as r:
                page = (r.status, await r.text())
            async with s.get(f"{base}/", headers={"Cookie": "swarm_worker_token=not-the-token"}) as r:
                refused = r.status
            async with s.get(f"http://127.0.0.1:{env['SWARMUI_INTERNAL_PORT']}/__fake__/requests") as r:
                seen = [x for x in await r.json() if x["path"] == "/"][-1]
        return page, refused, seen

    page, refused, seen = asyncio.run(go())
    assert page == (200, "<html>SwarmUI</html>") and refused == 401
    assert seen["headers"]["Cookie"] == "other=1"  # the gateway's cookie is not passed on


def test_trigger_refresh_brings_new_volume_files_in(gw):
    base, _, tmp = gw
    new = tmp / "volume" / "SwarmUI" / "Models" / "Lora" / "uploaded_mid_lease.safetensors"
    new.write_bytes(b"w")

    async def go():
        async with SwarmUIClient(base, token=TOKEN) as c:
            before = (await c.list_models("LoRA")).names
            await c.trigger_refresh()
            return before, (await c.list_models("LoRA")).names

    before, after = asyncio.run(go())
    assert "uploaded_mid_lease.safetensors" not in before and "uploaded_mid_lease.safetensors" in after


def test_chunked_client_body_is_forwarded_with_content_length(gw):
    base, _, _ = gw

    async def go():
        async def body():
            yield b'{"depth": 2, '
            yield b'"subtype": "LoRA", "session_id": "' + (await session()).encode() + b'"}'

        async def session():
            return (await _post(f"{base}/t/{TOKEN}/API/GetNewSession"))[1]["session_id"]

        async with aiohttp.ClientSession() as s, s.post(
                f"{base}/t/{TOKEN}/API/ListModels", data=body(), headers={"Content-Type": "application/json"}) as r:
            return r.status, await r.json()

    status, body = asyncio.run(go())
    assert status == 200 and body["files"][0]["name"] == "lightx2v_4steps.safetensors"


def test_websocket_generation_through_the_gateway(gw):
    base, _, _ = gw
    events = []

    async def go():
        async with SwarmUIClient(base, token=TOKEN) as c:
            return await c.generate({"prompt": "ws", "steps": 5, "images": 1}, on_event=events.append)

    result = asyncio.run(go())
    assert result.progress_events == 5 and result.outputs[0].startswith("View/")
    assert sum(1 for e in events if "gen_progress" in e) == 5

    async def refused():
        async with SwarmUIClient(base, token="nope-nope-nope") as c:
            await c._run_ws("GenerateText2ImageWS", {"images": 1}, None)

    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        asyncio.run(refused())
    assert err.value.status == 401


def test_images_rewritten_to_raw_base64_on_the_legacy_path_only(gw):
    base, _, _ = gw

    async def go():
        async with SwarmUIClient(f"{base}/t/{TOKEN}") as legacy, SwarmUIClient(base, token=TOKEN) as modern:
            a = await legacy.call("GenerateText2Image", {"images": 1, "prompt": "legacy", "steps": 1})
            b = await modern.call("GenerateText2Image", {"images": 1, "prompt": "modern", "steps": 1})
            c = await legacy.call("GenerateText2Image", {"images": 1, "prompt": "dns", "steps": 1, "donotsave": True})
            return a, b, c

    legacy, modern, donotsave = asyncio.run(go())
    assert base64.b64decode(legacy["images"][0], validate=True).startswith(b"\x89PNG")
    assert modern["images"][0].startswith("View/local/raw/")
    assert base64.b64decode(donotsave["images"][0], validate=True).startswith(b"\x89PNG")


def test_large_view_download_is_streamed(gw):
    base, _, tmp = gw
    size = 48 * 1024 * 1024 + 123
    target = tmp / "work" / "Output" / "local" / "raw" / "2026-01-01" / "big video.mp4"
    target.parent.mkdir(parents=True, exist_ok=True)
    chunk = os.urandom(1024 * 1024)
    with target.open("wb") as fh:
        for _ in range(48):
            fh.write(chunk)
        fh.write(b"x" * 123)
    expected = hashlib.sha256(target.read_bytes()).hexdigest()

    async def go():
        h = hashlib.sha256()
        got = 0
        async with aiohttp.ClientSession() as s, s.get(
                f"{base}/View/local/raw/2026-01-01/big%20video.mp4",
                headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 200 and r.content_length == size
            async for part in r.content.iter_chunked(1 << 20):
                h.update(part)
                got += len(part)
        return got, h.hexdigest()

    got, digest = asyncio.run(go())
    assert (got, digest) == (size, expected)
    target.unlink()


def test_lease_token_revocation_closes_websockets(gw):
    base, _, _ = gw
    from handlers.swarm_worker.actions import lease_session

    async def go():
        gen = lease_session({"id": "gw-lease", "input": {"action": "lease", "idle_seconds": 30,
                                                          "startup_grace_seconds": 30, "max_lease_seconds": 60}})
        first = await gen.__anext__()
        assert first["public_url"] == base  # SWARM_PUBLIC_URL unset, not on RunPod: the local gateway
        async with aiohttp.ClientSession() as s:
            ws = await s.ws_connect(f"{base}/API/GenerateText2ImageWS",
                                    headers={"Authorization": f"Bearer {first['token']}"})
            ok = await _post(f"{base}/API/GetNewSession", headers={"Authorization": f"Bearer {first['token']}"})
            rt = runtime()
            lease = rt.leases.current
            lease.stop_reason = "released"
            rt.submit(_stop(lease))
            last = [item async for item in gen][-1]
            msg = await asyncio.wait_for(ws.receive(), 5)
            after = await _post(f"{base}/API/GetNewSession", headers={"Authorization": f"Bearer {first['token']}"})
            return ok, last, msg, after

    async def _stop(lease):
        lease.stop.set()

    ok, last, msg, after = asyncio.run(go())
    assert ok[0] == 200 and last["released"] is True
    assert msg.type == aiohttp.WSMsgType.CLOSE and (msg.data, msg.extra) == (1008, "lease ended")
    assert after == (401, {"error": "A valid worker token is required.", "error_id": "worker_unauthorized"})
    # the env token is not affected by the lease ending
    assert asyncio.run(_post(f"{base}/API/GetNewSession", headers={"Authorization": f"Bearer {TOKEN}"}))[0] == 200


# -- compression: SwarmUI compresses like ASP.NET; the gateway never hands a client a body it did not ask for ------


async def _raw(url: str, *, headers: dict, body: dict | None = None) -> tuple[int, dict, bytes]:
    """A POST as a .NET HttpClient makes it: no automatic Accept-Encoding, no automatic decompression."""
    async with aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=("Accept-Encoding",)) as s, s.post(
            url, json=body or {}, headers=headers) as r:
        return r.status, dict(r.headers), await r.read()


def test_stand_in_compresses_json_like_aspnet(gw):
    import gzip

    import brotli

    _, env, _ = gw
    url = f"http://127.0.0.1:{env['SWARMUI_INTERNAL_PORT']}/API/GetNewSession"
    auth = {"Authorization": f"Bearer {runtime().process.internal_secret}"}

    def get(accept: str | None):
        headers = dict(auth, **({"Accept-Encoding": accept} if accept is not None else {}))
        return asyncio.run(_raw(url, headers=headers))

    status, headers, body = get("gzip, deflate, br")  # aiohttp's default with brotli installed
    assert status == 200 and headers["Content-Encoding"] == "br" and headers["Vary"] == "Accept-Encoding"
    assert "Content-Length" not in headers and headers["Transfer-Encoding"] == "chunked"
    assert b"session_id" in brotli.decompress(body)
    status, headers, body = get("br;q=0.5, gzip")
    assert headers["Content-Encoding"] == "gzip" and b"session_id" in gzip.decompress(body)
    status, headers, body = get("identity")
    assert "Content-Encoding" not in headers and headers["Vary"] == "Accept-Encoding" and b"session_id" in body
    status, headers, body = get(None)
    assert "Content-Encoding" not in headers and "Vary" not in headers and b"session_id" in body
    status, headers, body = asyncio.run(_raw(url, headers={"Accept-Encoding": "gzip"}))  # SwarmUI's own 401
    assert (status, body) == (401, b"Unauthorized") and "Content-Encoding" not in headers


def test_client_without_accept_encoding_gets_plain_json(gw):
    base, _, _ = gw
    for url, headers in [(f"{base}/API/GetNewSession", {"Authorization": f"Bearer {TOKEN}"}),
                         (f"{base}/t/{TOKEN}/API/GetNewSession", {})]:
        status, got, body = asyncio.run(_raw(url, headers=headers))
        assert status == 200 and "Content-Encoding" not in got, url
        assert json.loads(body)["session_id"]


def test_client_accept_encoding_is_forwarded_with_its_header(gw):
    import gzip

    base, _, _ = gw
    status, got, body = asyncio.run(_raw(f"{base}/API/GetNewSession",
                                         headers={"Authorization": f"Bearer {TOKEN}", "Accept-Encoding": "gzip"}))
    assert status == 200 and got["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(body))["session_id"]


def test_legacy_rewrite_reads_an_uncompressed_body_whatever_the_client_accepts(gw):
    base, _, _ = gw

    async def go():
        async with aiohttp.ClientSession(auto_decompress=False) as s:
            sid = (await _post(f"{base}/t/{TOKEN}/API/GetNewSession"))[1]["session_id"]
            async with s.post(f"{base}/t/{TOKEN}/API/GenerateText2Image",
                              json={"images": 1, "prompt": "zip", "steps": 1, "session_id": sid},
                              headers={"Accept-Encoding": "gzip, deflate, br"}) as r:
                return r.status, dict(r.headers), await r.read()

    status, headers, body = asyncio.run(go())
    assert status == 200 and "Content-Encoding" not in headers
    assert base64.b64decode(json.loads(body)["images"][0], validate=True).startswith(b"\x89PNG")


# -- tokens: the legacy token is not the lease's; strangers cost a counter ------------------------------------------


def test_refusals_are_counted_not_logged_one_by_one(gw, caplog):
    base, _, _ = gw
    gateway = runtime().gateway
    probe = "/API/" + "Bearer " * 200 + "stranger-path"

    async def flood(n: int):
        async with aiohttp.ClientSession() as s:
            for _ in range(n):
                async with s.post(f"{base}{probe}", json={}) as r:
                    assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")

    with caplog.at_level(logging.DEBUG, logger="swarm.gateway"):
        gateway.refused, gateway._refusals_logged_at = 0, time.monotonic()
        asyncio.run(flood(20))
        assert gateway.refused == 20 and not [r for r in caplog.records if r.name == "swarm.gateway"]
        gateway._refusals_logged_at -= 61  # a minute later, one line sums it up
        asyncio.run(flood(1))
    lines = [r.getMessage() for r in caplog.records if r.name == "swarm.gateway"]
    assert len(lines) == 1 and lines[0].startswith("refused 21 request(s) without a valid token")
    assert "stranger-path" not in caplog.text


# -- tests with a worker of their own (the module's worker is gone after them) ---------------------------------


def test_legacy_token_is_refused_while_a_lease_holds_the_worker(tmp_path):
    from handlers.swarm_worker.actions import lease_session

    with configured_worker(tmp_path, SWARM_ACCESS_TOKEN="") as env:  # no fixed token: a per-worker legacy one
        base = f"http://127.0.0.1:{env['SWARM_PUBLIC_PORT']}"
        legacy_url = call({"action": "ready"})["public_url"]
        assert legacy_url.startswith(f"{base}/t/")

        async def go():
            async with aiohttp.ClientSession() as s:
                ws = await s.ws_connect(f"{legacy_url}/API/GenerateText2ImageWS")
                gen = lease_session({"id": "lease-vs-legacy", "input": {
                    "action": "lease", "idle_seconds": 30, "startup_grace_seconds": 30}})
                first = await gen.__anext__()
                closed = await asyncio.wait_for(ws.receive(), 5)
                during = await _post(f"{legacy_url}/API/GetNewSession")
                leased = await _post(f"{base}/API/GetNewSession", headers={"Authorization": f"Bearer {first['token']}"})
                rt = runtime()
                lease = rt.leases.current
                lease.stop_reason = "released"
                rt.submit(_set(lease.stop))
                [item async for item in gen]
                after = await _post(f"{legacy_url}/API/GetNewSession")
                return closed, during, leased, after

        async def _set(event):
            event.set()

        closed, during, leased, after = asyncio.run(go())
        assert closed.type == aiohttp.WSMsgType.CLOSE and closed.data == 1008
        assert during[0] == 401 and leased[0] == 200
        assert after[0] == 200 and after[1]["session_id"]  # back once the lease has ended


def test_worker_starting_until_swarmui_is_up(tmp_path):
    with configured_worker(tmp_path, SWARM_ACCESS_TOKEN=TOKEN, FAKE_SWARMUI_START_DELAY="3") as env:
        base = f"http://127.0.0.1:{env['SWARM_PUBLIC_PORT']}"
        rt = runtime()
        rt.start_background().result(10)
        starting = asyncio.run(_post(f"{base}/API/GetNewSession", headers={"Authorization": f"Bearer {TOKEN}"}))
        unauthorized = asyncio.run(_post(f"{base}/API/GetNewSession"))
        assert starting == (503, {"error": "SwarmUI is starting; retry shortly.", "error_id": "worker_starting"})
        assert unauthorized[0] == 401
        deadline = time.monotonic() + 20
        while not rt.process.ready and time.monotonic() < deadline:
            time.sleep(0.05)

        async def session():
            async with SwarmUIClient(base, token=TOKEN) as c:
                return await c.session_id()

        assert asyncio.run(session())


def test_sessions_renew_after_swarmui_restart_through_the_gateway(tmp_path):
    with configured_worker(tmp_path, SWARM_ACCESS_TOKEN=TOKEN) as env:
        base = f"http://127.0.0.1:{env['SWARM_PUBLIC_PORT']}"
        assert call({"action": "ready"})["ready"] is True

        async def go():
            async with SwarmUIClient(base, token=TOKEN) as c:
                before = await c.session_id()
                crashed = None
                try:
                    await c.generate({"prompt": "CRASH_SWARMUI", "steps": 4})
                except SwarmUIError as exc:
                    crashed = exc
                return before, crashed, c

        before, crashed, _ = asyncio.run(go())
        assert crashed is not None
        assert call({"action": "ready"})["ready"] is True  # restarted

        async def after(sid):
            async with SwarmUIClient(base, token=TOKEN) as c:
                c._session_id = sid
                gen = await c.generate({"prompt": "fine", "steps": 2})
                return gen, await c.session_id()

        gen, kept = asyncio.run(after(before))  # sessions persist across a restart in the same container
        assert gen.outputs and kept == before
        gen, renewed = asyncio.run(after("0" * 32))  # one from another container is renewed
        assert gen.outputs and renewed != "0" * 32
