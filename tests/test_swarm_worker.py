"""The swarm worker's handler called directly: legacy actions, generate, models, leases, crashes.

SwarmUI is the stand-in (`tests/fakes/swarmui.py`) launched by the worker's own process
manager through `SWARMUI_LAUNCH_CMD`, behind the worker's real gateway.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from common.swarmui import SwarmUIClient, SwarmUIError
from tests.fakes import swarmui as fake
from tests.swarm_helpers import assert_token_revoked, call, configured_worker

SDXL = "OfficialStableDiffusion/sd_xl_base_1.0"
WAN_HIGH = "Wan/wan2.2_i2v_high_noise_14B_fp8"
WAN_LOW = "Wan/wan2.2_i2v_low_noise_14B_fp8"


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("worker")
    with configured_worker(tmp) as env:
        yield env, tmp


def runtime():
    from handlers.swarm_worker.runtime import get_runtime

    return get_runtime()


# -- legacy actions: the fields the legacy extension reads ---------------------------------------------------


def test_legacy_ready_health_wakeup_keepalive_shutdown_fields(worker):
    env, _ = worker
    ready = call({"action": "ready"})
    assert ready["ready"] is True and "error" not in ready
    assert set(ready) >= {"ready", "public_url", "session_id", "worker_id", "version"}
    base = f"http://127.0.0.1:{env['SWARM_PUBLIC_PORT']}/t/"
    assert ready["public_url"].startswith(base) and len(ready["public_url"]) > len(base) + 30
    assert ready["session_id"]

    health = call({"action": "health"})
    assert health["healthy"] is True and health["protocol"] == 2 and health["worker_id"] == ready["worker_id"]

    wake = call({"action": "wakeup", "duration": 30, "interval": 5})  # SwarmUI is up: no wait
    assert wake["success"] is True and wake["reason"] == "ready" and wake["ready"] is True
    assert wake["public_url"] == ready["public_url"] and wake["held_seconds"] < 5 and wake["session_id"]

    runtime().cfg.wakeup_hold = "duration"  # SWARM_WAKEUP_HOLD=duration: the literal hold
    try:
        started = time.monotonic()
        wake = call({"action": "wakeup", "duration": 0.4, "interval": 0.1})
        assert time.monotonic() - started >= 0.4 and wake["reason"] == "completed"
    finally:
        runtime().cfg.wakeup_hold = "ready"

    keep = call({"action": "keepalive", "duration": 0.3, "interval": 0.1})
    assert keep["success"] is True and keep["checks"] >= 2 and keep["healthy"] is True

    down = call({"action": "shutdown"})
    assert down["success"] is True and down["released_holds"] == 0
    # the legacy URL stays valid: other generations of the extension may still be using it
    again = call({"action": "ready"})
    assert again["ready"] is True and again["public_url"] == ready["public_url"]


def test_legacy_url_reaches_swarmui_and_images_come_back_as_raw_base64(worker):
    ready = call({"action": "ready"})

    async def legacy_generate():
        # What the legacy extension does: POST public_url + "/API/GenerateText2Image" with session_id.
        async with SwarmUIClient(ready["public_url"]) as c:
            c._session_id = ready["session_id"]
            return await c.call("GenerateText2Image", {"images": 2, "prompt": "cat", "model": SDXL, "steps": 2})

    result = asyncio.run(legacy_generate())
    assert len(result["images"]) == 2
    for img in result["images"]:
        assert base64.b64decode(img).startswith(b"\x89PNG")


def test_concurrent_shutdown_ends_keepalive(worker):
    results = {}

    def keepalive():
        results["keep"] = call({"action": "keepalive", "duration": 30, "interval": 0.2}, "keep-1")

    t = threading.Thread(target=keepalive)
    started = time.monotonic()
    t.start()
    deadline = time.monotonic() + 10
    while not runtime().holds and time.monotonic() < deadline:
        time.sleep(0.02)
    down = call({"action": "shutdown"}, "shutdown-1")
    t.join(10)
    assert down["success"] is True and down["released_holds"] == 1
    assert results["keep"]["reason"] == "shutdown"
    assert time.monotonic() - started < 10


def test_unknown_action_and_bad_input(worker):
    out = call({"action": "explode"})
    assert out == {"success": False, "error": "Unknown action: explode", "error_id": "unknown_action",
                   "available_actions": ["lease", "wakeup", "keepalive", "ready", "health", "shutdown", "status", "generate",
                                         "models"]}
    bad = call({"action": "keepalive", "duration": -1})
    assert bad["error_code"] == "invalid_input" and "duration" in bad["error"]
    gen = call({"action": "generate", "params": {"prompt": "x", "steps": 0}, "bogus": 1})
    assert gen["error_code"] == "invalid_input"
    assert "params.steps" in gen["error"] and "bogus: unknown field" in gen["error"]
    i2v = call({"action": "generate", "params": {"prompt": "x", "videomodel": WAN_HIGH}})
    assert "params.initimage: Field required" in i2v["error"]
    both = call({"action": "generate", "params": {"initimage": "abc", "videomodel": WAN_HIGH},
                 "init_image_url": "https://example.com/a.png"})
    assert "params: give either init_image_url or params.initimage, not both" in both["error"]


# -- generate, models, status -----------------------------------------------------------------------------------


def test_generate_text_to_image_inline(worker):
    out = call({"action": "generate", "params": {"prompt": "a red fox", "model": SDXL, "steps": 4, "images": 2,
                                                 "seed": 7}}, "gen-t2i")
    assert out["success"] is True and out["delivery"] == "inline" and len(out["outputs"]) == 2
    first = out["outputs"][0]
    assert first["mime"] == "image/png" and first["kind"] == "image"
    assert base64.b64decode(first["base64"]).startswith(b"\x89PNG")
    assert out["progress_events"] == 8 and "generate" in out["timings"] and out["worker_version"]
    # SwarmUI's own copies are gone; the job's copies are in the job folder
    _, tmp = worker
    assert not list((tmp / "work" / "Output").rglob("*a red fox*"))
    assert len(list((tmp / "job-outputs" / "gen-t2i").iterdir())) == 2
    # outputs in batch order with their metadata, whatever order SwarmUI finished them in
    assert [o["metadata"]["sui_image_params"]["seed"] for o in out["outputs"]] == [7, 8]
    shuffled = call({"action": "generate", "params": {"prompt": "FAKE_OUT_OF_ORDER", "steps": 1, "images": 3,
                                                      "seed": 1}}, "gen-order")
    assert [o["metadata"]["sui_image_params"]["seed"] for o in shuffled["outputs"]] == [1, 2, 3]


def test_cancelled_generate_job_interrupts_its_generation_alone(worker):
    from handlers.swarm_worker.handler import handler

    def job(job_id: str, prompt: str, steps: int) -> dict:
        return {"id": job_id, "input": {"action": "generate", "params": {"prompt": prompt, "model": SDXL,
                                                                         "steps": steps, "seed": 3}}}

    async def live_gens() -> int:  # asked on the worker's own event loop, where its client lives
        rt = runtime()
        return (await rt.call(rt.process.client.global_status()))["status"]["live_gens"]

    async def go():
        doomed = asyncio.create_task(handler(job("gen-doomed", "cancel me", 500)))  # 5 s of steps
        kept = asyncio.create_task(handler(job("gen-kept", "keep me", 100)))  # 1 s
        deadline = time.monotonic() + 20
        while await live_gens() < 2:
            assert time.monotonic() < deadline, "both generations should be running"
            await asyncio.sleep(0.02)
        doomed.cancel()  # RunPod cancelled the job
        with pytest.raises(asyncio.CancelledError):
            await doomed
        out = await kept
        await asyncio.sleep(0.1)
        return out, await live_gens()

    assert call({"action": "ready"})["ready"] is True
    out, live = asyncio.run(go())
    assert out["success"] is True and len(out["outputs"]) == 1  # the other job's generation went on
    assert live == 0  # the cancelled one stopped in SwarmUI instead of running its 5 s to the end
    _, tmp = worker
    assert not list((tmp / "work" / "Output").rglob("*cancel me*"))


def test_generate_job_folder_stays_under_the_output_folder(worker):
    out = call({"action": "generate", "params": {"prompt": "a fox", "model": SDXL, "steps": 1, "seed": 1}}, "..")
    assert out["success"] is True, out
    _, tmp = worker
    kept = [p for p in (tmp / "job-outputs").iterdir() if p.name.startswith("job-")]  # common.volumes.safe_job_id
    assert len(kept) == 1 and len(list(kept[0].iterdir())) == 1
    assert not [p for p in tmp.iterdir() if p.suffix == ".png"]  # not one folder up, beside job-outputs


def test_generate_image_to_video_over_http(worker):
    init = "data:image/png;base64," + base64.b64encode(fake.tiny_png(5)).decode()
    out = call({"action": "generate", "websocket": False, "params": {
        "prompt": "the fox turns its head", "model": SDXL, "initimage": init, "videomodel": WAN_HIGH,
        "videoswapmodel": WAN_LOW, "videoframes": 81, "videosteps": 4, "videocfg": 1, "width": 832, "height": 480}},
        "gen-i2v")
    assert out["success"] is True, out
    video = out["outputs"][0]
    assert video["kind"] == "video" and video["filename"].endswith(".mp4")
    assert base64.b64decode(video["base64"])[4:8] == b"ftyp"
    assert out["params"]["initimagecreativity"] == 0.0 and "initimage" not in out["params"]


def test_generate_image_to_video_from_an_init_image_url(worker):
    from tests.fakes.http_files import FileServer, Route

    with FileServer() as files:
        files.add("/frame.png", Route(data=fake.tiny_png(9)))
        files.add("/notes.txt", Route(data=b"not an image"))
        params = {"prompt": "waves", "videomodel": WAN_HIGH, "videosteps": 2, "videoframes": 9}
        out = call({"action": "generate", "params": params, "init_image_url": files.url("/frame.png")}, "gen-url")
        bad = call({"action": "generate", "params": params, "init_image_url": files.url("/notes.txt")})
        missing = call({"action": "generate", "params": params, "init_image_url": files.url("/nope.png")})
    assert out["success"] is True and out["outputs"][0]["kind"] == "video" and "download" in out["timings"]
    assert bad["error_code"] == "invalid_input" and "init_image_url: the file is not a PNG" in bad["error"]
    assert missing["error_code"] == "download_failed"


def test_generate_unknown_model_is_named_before_generating(worker):
    out = call({"action": "generate", "params": {"prompt": "x", "model": "nope/missing"}})
    assert out["error_code"] == "invalid_input"
    assert "params.model: model 'nope/missing' is not on this worker" in out["error"]
    assert "OfficialStableDiffusion/sd_xl_base_1.0.safetensors" in out["error"]


def test_models_lists_volume_through_a_per_worker_tree(worker):
    _, tmp = worker
    new = tmp / "volume" / "SwarmUI" / "Models" / "Lora" / "added_later.safetensors"
    new.write_bytes(b"w")
    (new.parent / "still_downloading.safetensors.partial").write_bytes(b"w")  # a fetch in progress
    out = call({"action": "models", "subtypes": ["Stable-Diffusion", "LoRA", "VAE", "Clip"]})
    assert out["success"] is True
    assert f"{SDXL}.safetensors" in out["models"]["Stable-Diffusion"]
    assert f"{WAN_HIGH}.safetensors" in out["models"]["Stable-Diffusion"]
    assert "added_later.safetensors" in out["models"]["LoRA"]
    assert out["models"]["VAE"] == ["Wan/wan_2.1_vae.safetensors"]
    # SwarmUI wrote its metadata files into the tree, never into the shared volume
    assert not list((tmp / "volume").rglob("*.ldb"))
    assert list((tmp / "work" / "model_tree").rglob("model_metadata.ldb"))
    assert not (tmp / "work" / "model_tree" / "Lora" / "still_downloading.safetensors.partial").exists()
    link = tmp / "work" / "model_tree" / "Lora" / "added_later.safetensors"
    assert link.is_symlink() and link.resolve() == new.resolve()
    new.unlink()
    out = call({"action": "models", "subtypes": ["LoRA"]})
    assert "added_later.safetensors" not in out["models"]["LoRA"] and not link.is_symlink()


def test_status_reports_swarmui_and_lease(worker):
    assert call({"action": "ready"})["ready"] is True  # status reports SwarmUI's state, without waiting for it
    out = call({"action": "status"})
    assert out["success"] is True and out["swarmui"]["state"] == "ready" and out["lease"] is None
    assert out["global_status"]["status"]["live_gens"] == 0


def test_swarmui_settings_close_the_loopback_bypass(worker):
    env, tmp = worker
    assert call({"action": "ready"})["ready"] is True  # the settings are written when SwarmUI starts
    text = (tmp / "work" / "Data" / "Settings.fds").read_text()
    settings = fake.parse_fds(text)
    assert settings["Network"]["AuthBypassIPs"] == "none" and settings["Network"]["RequiredAuthorization"].startswith(
        "Bearer ")
    assert settings["Network"]["PortCanChange"] == "false"
    assert settings["Paths"]["ModelRoot"] == str(tmp / "work" / "model_tree")
    assert '""' not in text

    async def direct():
        async with SwarmUIClient(f"http://127.0.0.1:{env['SWARMUI_INTERNAL_PORT']}") as c:
            await c.session_id()

    with pytest.raises(SwarmUIError) as err:
        asyncio.run(direct())  # loopback, but without the gateway's secret
    assert err.value.status == 401


# -- leases (iterating the lease stream directly) ---------------------------------------------------------------------


async def _collect_lease(job_input: dict, during=None) -> tuple[list[dict], float]:
    from handlers.swarm_worker.actions import lease_session

    items, start = [], time.monotonic()
    task = None
    async for item in lease_session({"id": "lease-job", "input": {"action": "lease", **job_input}}):
        items.append(item)
        if during and item.get("token"):
            task = asyncio.create_task(during(item))
    if task:
        await task
    return items, time.monotonic() - start


def test_lease_startup_grace_expires_and_a_second_lease_waits(worker):
    async def go():
        from handlers.swarm_worker.actions import lease_session

        gen = lease_session({"id": "l1", "input": {"action": "lease", "idle_seconds": 5,
                                                    "startup_grace_seconds": 1.5, "max_lease_seconds": 60}})
        first = await gen.__anext__()
        # taken in the same batch as the first: it waits for the worker instead of failing the job
        second = asyncio.create_task(_collect_lease({"startup_grace_seconds": 0.5}))
        rest = [item async for item in gen]
        first_ended = time.monotonic()
        items, _ = await second
        return first, rest, first_ended, items

    first, rest, first_ended, second = asyncio.run(go())
    assert first["protocol"] == 2 and first["success"] is True and len(first["token"]) >= 60
    assert first["startup_grace_seconds"] == 1.5 and first["idle_seconds"] == 5 and first["max_lease_seconds"] == 60
    assert set(first) >= {"public_url", "token", "worker_id", "version", "lease"}
    assert rest[-1]["released"] is True and rest[-1]["reason"] == "startup_grace_expired"
    assert second[0]["success"] is True and second[0]["lease"] == first["lease"] + 1
    assert second[0]["token"] != first["token"] and second[-1]["reason"] == "startup_grace_expired"


def test_lease_idle_release_revokes_token_and_wipes_outputs(worker):
    env, tmp = worker
    seen = {}

    async def use(first):
        async with SwarmUIClient(first["public_url"], token=first["token"]) as c:
            seen["gen"] = await c.generate({"prompt": "lease gen", "model": SDXL, "steps": 30})
            seen["outputs"] = list((tmp / "work" / "Output").rglob("*.png"))

    items, elapsed = asyncio.run(_collect_lease({"idle_seconds": 0.5, "startup_grace_seconds": 30,
                                                 "max_lease_seconds": 60}, during=use))
    first, last = items
    assert last["released"] is True and last["reason"] == "idle"
    assert elapsed < 20  # released on idle, long before the 30 s grace
    assert len(seen["gen"].outputs) == 1 and seen["outputs"]
    assert not list((tmp / "work" / "Output").rglob("*.png"))  # wiped at release

    assert_token_revoked(first["public_url"], first["token"])


def test_lease_max_lifetime_waits_for_a_running_generation(worker):
    seen = {}

    async def long_generation(first):
        async with SwarmUIClient(first["public_url"], token=first["token"]) as c:
            result = await c.generate({"prompt": "long", "steps": 150})  # about 1.5 s with 0.01 s steps
            seen["done"] = time.monotonic()
            seen["outputs"] = result.outputs

    items, _ = asyncio.run(_collect_lease({"idle_seconds": 30, "startup_grace_seconds": 30,
                                           "max_lease_seconds": 0.3}, during=long_generation))
    released_at = time.monotonic()
    assert items[-1]["reason"] == "max_lifetime"
    assert len(seen["outputs"]) == 1  # the generation was not cut
    assert released_at >= seen["done"]
    assert items[-1]["held_seconds"] >= 1.0


async def _published(rt, deadline: float) -> None:
    while (rt.leases.current is None or rt.leases.current.published is None) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


def cancel_lease_job(job_id: str, before_cancel=_published) -> tuple:
    """Start a lease job, `await before_cancel(runtime, deadline)`, cancel the job; returns the lease still
    held (None once released, within 10 s) and whether its token still opens the gateway."""
    from handlers.swarm_worker.handler import handler

    async def go():
        task = asyncio.create_task(handler({"id": job_id, "input": {"action": "lease", "idle_seconds": 60,
                                                                    "startup_grace_seconds": 60}}))
        rt = runtime()
        deadline = time.monotonic() + 10
        await before_cancel(rt, deadline)
        token = rt.leases.current.token
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        while rt.leases.current is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return rt.leases.current, rt.gateway._match(token)

    return asyncio.run(go())


def test_cancelled_lease_job_releases_at_once(worker):
    assert cancel_lease_job("cancel-me") == (None, None)


def test_a_lease_granted_as_its_job_is_cancelled_is_released(worker):
    """The cancel lands after the runtime granted the lease but before the job's loop took the answer
    (the job's loop is held up meanwhile, as on a loaded machine): the granted lease is released all the same."""

    async def block_this_loop_through_the_grant(rt, deadline):
        assert rt.leases.current is None
        while rt.leases.current is None and time.monotonic() < deadline:  # the runtime is granting it
            await asyncio.sleep(0)
        # From here this loop is blocked: the grant completes on the runtime's loop and its answer waits
        # in this loop's queue when the cancel lands.
        while rt.leases.current.published is None and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.05)

    assert cancel_lease_job("cancel-at-grant", block_this_loop_through_the_grant) == (None, None)


def test_a_lease_granted_while_the_runtime_is_busy_and_then_cancelled_is_released(worker, monkeypatch):
    """The runtime's loop is busy (slow log handlers, say) when the grant completes, so the granted lease
    has not reached the job yet when the job is cancelled: the lease is released, not leaked."""
    leases = runtime().leases
    real_begin = leases.begin

    async def busy_after_granting(*args, **kwargs):
        granted = await real_begin(*args, **kwargs)
        asyncio.get_running_loop().call_soon(time.sleep, 0.5)  # runs before the answer is handed over
        return granted

    monkeypatch.setattr(leases, "begin", busy_after_granting)
    assert cancel_lease_job("cancel-busy") == (None, None)


def test_a_lease_cancelled_while_its_first_output_is_posted_is_released(worker, monkeypatch):
    """On RunPod the lease's first output is posted to the stream before the job waits on the lease: a
    cancel that lands then releases the lease at once (not whenever the generator is collected)."""
    from handlers.swarm_worker import actions

    posting = asyncio.Event()

    async def slow_post(job, item):
        posting.set()
        await asyncio.sleep(30)

    monkeypatch.setattr(actions, "_publish_stream", slow_post)

    async def while_posting(rt, deadline):
        await asyncio.wait_for(posting.wait(), 10)

    gc.disable()  # a generator left unclosed is found only by the cycle collector, whenever that runs
    try:
        assert cancel_lease_job("cancel-at-post", while_posting) == (None, None)
    finally:
        gc.enable()


def test_hold_outlasts_a_running_generation(worker):
    ready = call({"action": "ready"})
    done = {}

    def legacy_generation():
        async def go():
            async with SwarmUIClient(ready["public_url"]) as c:
                await c.generate({"prompt": "slow", "steps": 120}, websocket=False)  # about 1.2 s
        asyncio.run(go())
        done["at"] = time.monotonic()

    t = threading.Thread(target=legacy_generation)
    t.start()
    deadline = time.monotonic() + 10
    while runtime().gateway.generations_in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    hold = call({"action": "keepalive", "duration": 0.1, "interval": 0.05})
    ended = time.monotonic()
    t.join(10)
    assert hold["reason"] == "completed" and ended >= done["at"] - 0.05
    assert hold["held_seconds"] >= 0.5


def test_lease_limits_are_clamped(worker):
    rt = runtime()
    limits = rt.leases.limits(0.0001, 10**9, None)
    assert limits["idle_seconds"] == rt.cfg.lease_min_seconds
    assert limits["startup_grace_seconds"] == rt.cfg.lease_cap_seconds
    assert limits["max_lease_seconds"] == rt.cfg.max_lease_seconds


# -- SwarmUI failures -----------------------------------------------------------------------------------------------------


def test_crash_mid_generation_gives_a_clear_error_and_restarts(tmp_path):
    with configured_worker(tmp_path):
        assert call({"action": "ready"})["ready"] is True
        first_pid = runtime().process.pid
        out = call({"action": "generate", "params": {"prompt": "CRASH_SWARMUI please", "steps": 10}})
        assert out["error_code"] == "engine_failed"
        assert "SwarmUI exited with code 134 during the generation; it is being restarted" in out["error"]
        assert any("simulated fatal error" in line for line in out["details"])
        assert "refresh_worker" not in out
        again = call({"action": "generate", "params": {"prompt": "after the crash", "steps": 2}})
        assert again["success"] is True
        assert runtime().process.restarts == 1 and runtime().process.pid != first_pid
        # a second crash exhausts the restart budget: the worker asks RunPod for a fresh one
        out = call({"action": "generate", "params": {"prompt": "CRASH_SWARMUI again", "steps": 10}})
        assert "will not be restarted again" in out["error"] and out["refresh_worker"] is True
        assert call({"action": "health"})["healthy"] is False


def test_a_crash_reported_after_the_restart_still_names_the_exit_and_its_log(tmp_path, monkeypatch):
    # On a loaded machine the generation's broken connection can surface after the worker has already
    # restarted SwarmUI (which clears the log tail): the reply still describes the run that crashed.
    from common.swarmui import SwarmUIUnavailable

    original = SwarmUIClient.generate

    async def reported_late(self, *args, **kwargs):
        try:
            return await original(self, *args, **kwargs)
        except SwarmUIUnavailable:
            await asyncio.sleep(1.5)  # meanwhile the worker restarts SwarmUI
            raise

    monkeypatch.setattr(SwarmUIClient, "generate", reported_late)
    with configured_worker(tmp_path):
        assert call({"action": "ready"})["ready"] is True
        first_pid = runtime().process.pid
        out = call({"action": "generate", "params": {"prompt": "CRASH_SWARMUI please", "steps": 10}})
        assert runtime().process.pid != first_pid  # restarted before the reply was made
        assert "SwarmUI exited with code 134 during the generation; it is being restarted" in out["error"]
        assert any("simulated fatal error" in line for line in out["details"])


def test_lease_ends_when_swarmui_is_gone_for_good(tmp_path):
    with configured_worker(tmp_path, SWARMUI_MAX_RESTARTS="0"):
        async def crash(first):
            async with SwarmUIClient(first["public_url"], token=first["token"]) as c:
                with pytest.raises(SwarmUIError):
                    await c.generate({"prompt": "CRASH_SWARMUI", "steps": 10})

        items, _ = asyncio.run(_collect_lease({"idle_seconds": 30, "startup_grace_seconds": 30}, during=crash))
        assert items[-1]["released"] is True and items[-1]["reason"] == "swarmui_exited"
        assert runtime().process.state == "failed"


def test_startup_failure_reports_the_log_tail(tmp_path):
    with configured_worker(tmp_path, FAKE_SWARMUI_FAIL_START="1", SWARMUI_STARTUP_TIMEOUT="10"):
        os.environ["FAKE_SWARMUI_FAIL_START"] = "1"
        ready = call({"action": "ready"})
        assert ready["ready"] is False
        assert "exited with code 1 while starting" in ready["error"]
        assert any("simulated startup failure" in line for line in ready["log_tail"])
        assert runtime().process.restarts == 1 and runtime().process.state == "failed"
        lease = call({"action": "lease"})
        assert lease["reason"] == "swarmui_failed" and lease["error"].startswith("engine_failed")
        wake = call({"action": "wakeup"})
        assert wake["success"] is False and wake["reason"] == "swarmui_failed" and wake["ready"] is False
        assert "exited with code 1" in wake["error"] and wake["log_tail"]
    os.environ.pop("FAKE_SWARMUI_FAIL_START", None)


def test_wakeup_holds_a_cold_worker_until_swarmui_is_ready(tmp_path):
    with configured_worker(tmp_path, FAKE_SWARMUI_START_DELAY="0.6", FAKE_SWARMUI_BACKEND_DELAY="0.6"):
        started = time.monotonic()
        wake = call({"action": "wakeup", "duration": 30, "interval": 5})
        held = time.monotonic() - started
        assert wake["reason"] == "ready" and wake["ready"] is True
        assert 1.0 <= held < 15  # through the boot, not the whole 30 s the legacy extension would wait out
        assert call({"action": "ready"})["ready"] is True


def test_lease_cancelled_while_swarmui_starts_frees_the_worker(tmp_path):
    from handlers.swarm_worker.handler import handler

    with configured_worker(tmp_path, FAKE_SWARMUI_START_DELAY="1.0"):
        async def go():
            task = asyncio.create_task(handler({"id": "early", "input": {"action": "lease"}}))
            await asyncio.sleep(0.3)
            assert runtime().leases.current is not None and runtime().leases.current.published is None
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(100):
                if runtime().leases.current is None:
                    break
                await asyncio.sleep(0.02)
            return runtime().leases.current

        assert asyncio.run(go()) is None
        first = asyncio.run(_collect_lease({"startup_grace_seconds": 0.2}))[0]
        assert first[0]["success"] is True and first[-1]["reason"] == "startup_grace_expired"


def test_slow_start_waits_for_the_backend(tmp_path):
    with configured_worker(tmp_path, FAKE_SWARMUI_START_DELAY="0.5", FAKE_SWARMUI_BACKEND_DELAY="0.8"):
        started = time.monotonic()
        ready = call({"action": "ready"})
        assert ready["ready"] is True and time.monotonic() - started >= 1.0
        assert runtime().process.restarts == 0


def test_startup_timeout(tmp_path):
    with configured_worker(tmp_path, FAKE_SWARMUI_BACKEND_DELAY="60", SWARMUI_STARTUP_TIMEOUT="1",
                           SWARMUI_MAX_RESTARTS="0"):
        ready = call({"action": "ready"})
        assert ready["ready"] is False and "not ready within 1 s (backends: loading)" in ready["error"]


def test_swarmui_does_not_get_the_workers_credentials(tmp_path, monkeypatch):
    import requests

    for name, value in {"RUNPOD_AI_API_KEY": "rp-key-123456", "AWS_SECRET_ACCESS_KEY": "aws-secret-123456",
                        "SWARM_ACCESS_TOKEN": "gateway-token-0123456789", "HF_TOKEN": "hf_abcdefghijk",
                        "SWARMUI_PASS_ENV": "HF_TOKEN"}.items():
        monkeypatch.setenv(name, value)
    with configured_worker(tmp_path) as env:
        assert call({"action": "ready"})["ready"] is True
        names = requests.get(f"http://127.0.0.1:{env['SWARMUI_INTERNAL_PORT']}/__fake__/env", timeout=10).json()
    assert "PATH" in names and "HF_TOKEN" in names  # passed on on purpose
    assert not {"RUNPOD_AI_API_KEY", "AWS_SECRET_ACCESS_KEY", "SWARM_ACCESS_TOKEN"} & set(names)


def test_stop_kills_the_process_group(tmp_path):
    with configured_worker(tmp_path):
        assert call({"action": "ready"})["ready"] is True
        pid = runtime().process.pid
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_default_launch_command_uses_the_image_install(tmp_path, monkeypatch):
    from handlers.swarm_worker.config import WorkerConfig

    for name in ("SWARMUI_LAUNCH_CMD", "SWARMUI_MODEL_ROOT", "SWARM_ACCESS_TOKEN", "SWARMUI_INTERNAL_PORT",
                 "SWARM_PUBLIC_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SWARMUI_DIR", "/opt/SwarmUI")
    cfg = WorkerConfig.from_env()
    assert cfg.launch_cmd.startswith("/opt/SwarmUI/src/bin/live_release/SwarmUI --launch_mode none "
                                     "--host 127.0.0.1 --port {port}")
    assert cfg.internal_port == 7810 and cfg.public_port == 7801
    assert Path("/opt/SwarmUI/Models") in cfg.model_roots
    monkeypatch.setenv("SWARM_ACCESS_TOKEN", "short")
    with pytest.raises(ValueError, match="SWARM_ACCESS_TOKEN"):
        WorkerConfig.from_env()


def test_where_the_worker_is_reached_comes_from_its_config(tmp_path, monkeypatch):
    from handlers.swarm_worker.config import WorkerConfig
    from handlers.swarm_worker.lease_control import vast_public_url
    from handlers.swarm_worker.standalone import direct_base_url, tunnel_binary
    from handlers.swarm_worker.tunnel import TunnelError

    for name in ("RUNPOD_POD_ID", "SWARM_PUBLIC_URL", "SWARMUI_TLS_CERT", "SWARMUI_TLS_KEY", "SWARM_MODEL_DOWNLOAD_ROOT",
                 "SWARM_URL_FILE", "SWARM_CLOUDFLARED_BIN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"SWARM_PUBLIC_PORT": "7801", "SWARMUI_TLS": "off", "PUBLIC_IPADDR": " 203.0.113.7 ",
                        "VAST_TCP_PORT_7801": "40123", "VAST_CONTAINERLABEL": "C.42", "SWARM_TUNNEL": "auto",
                        "SWARM_WORK_DIR": str(tmp_path), "SWARMUI_MODEL_ROOT": str(tmp_path / "models")}.items():
        monkeypatch.setenv(name, value)
    cfg = WorkerConfig.from_env()
    assert vast_public_url(cfg) == direct_base_url(cfg) == "http://203.0.113.7:40123"
    assert cfg.worker_id == "C.42" and cfg.url_file == tmp_path / "public_url.txt"
    assert cfg.model_download_root == tmp_path / "models" and cfg.lease_control_port == 18000

    monkeypatch.setenv("RUNPOD_POD_ID", "pod9")
    monkeypatch.setenv("SWARM_CLOUDFLARED_BIN", "/bin/true")
    cfg = WorkerConfig.from_env()
    assert cfg.worker_id == "pod9" and direct_base_url(cfg) == "https://pod9-7801.proxy.runpod.net"
    assert tunnel_binary(cfg) is None  # auto: the pod proxy is there
    monkeypatch.setenv("SWARM_TUNNEL", "cloudflared")
    assert tunnel_binary(WorkerConfig.from_env()) == "/bin/true"
    monkeypatch.setenv("SWARM_TUNNEL", "ngrok")
    with pytest.raises(TunnelError, match="SWARM_TUNNEL: expected auto, cloudflared or none, got 'ngrok'"):
        tunnel_binary(WorkerConfig.from_env())
    monkeypatch.delenv("PUBLIC_IPADDR")
    monkeypatch.setenv("SWARM_TUNNEL", "none")
    with pytest.raises(ValueError, match="PUBLIC_IPADDR and VAST_TCP_PORT_7801 must be set"):
        vast_public_url(WorkerConfig.from_env())


# -- SwarmUI as it really behaves (its FDS files, ports, logs, status) -------------------------------------


def test_backends_fds_leaves_empty_values_out_and_comfyui_starts(worker):
    env, tmp = worker
    assert call({"action": "ready"})["ready"] is True
    text = (tmp / "work" / "Data" / "Backends.fds").read_text()
    settings = fake.parse_fds(text)["0"]["settings"]
    assert "ExtraArgs" not in settings and '""' not in text  # FDS has no quoting: "" would reach ComfyUI
    assert settings["StartScript"] == "dlbackend/ComfyUI/main.py"
    assert fake.comfy_launch_error(settings, 7820, tmp) is None
    backends = asyncio.run(runtime().call(runtime().process.client.list_backends()))
    assert backends["0"]["status"] == "running"


def test_fds_values_survive_the_round_trip():
    from handlers.swarm_worker.swarm_files import backends_fds, fds

    data = {"A": "C:\\models\\x", "B": " padded ", "C": "tab\there", "D": "", "E": None, "F": True,
            "S": {"Inner": 3, "Empty": {}}}
    assert fake.parse_fds(fds(data)) == {"A": "C:\\models\\x", "B": " padded ", "C": "tab\there", "F": "true",
                                         "S": {"Inner": "3"}}
    with pytest.raises(ValueError, match="plain name"):
        fds({"a:b": 1})
    assert fake.parse_fds(backends_fds("--cpu"))["0"]["settings"]["ExtraArgs"] == "--cpu"


def test_worker_refuses_to_start_on_a_taken_port(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with configured_worker(tmp_path, SWARMUI_INTERNAL_PORT=str(port), SWARMUI_STARTUP_TIMEOUT="8",
                               SWARMUI_MAX_RESTARTS="0"):
            ready = call({"action": "ready"})
    # with PortCanChange SwarmUI would have moved to the next port and the worker waited on the wrong one
    assert ready["ready"] is False and "exited with code 1 while starting" in ready["error"]


def test_a_very_long_log_line_does_not_stall_swarmui(tmp_path):
    with configured_worker(tmp_path, FAKE_SWARMUI_LONG_LOG_LINE=str(400_000), SWARMUI_STARTUP_TIMEOUT="10"):
        assert call({"action": "ready"})["ready"] is True
        tail = runtime().process.tail(50)
        assert any(line.endswith("…(line cut)") and len(line) < 5000 for line in tail)
        assert (tmp_path / "work" / "swarmui.log").stat().st_size > 400_000  # the log file keeps it all


def test_a_failed_status_check_counts_as_busy(worker):
    assert call({"action": "ready"})["ready"] is True
    rt = runtime()

    async def failing():
        raise SwarmUIError("HTTP 500", status=500, route="GetGlobalStatus")

    async def check():
        original = rt.process.client.global_status
        rt.process.client.global_status = failing
        try:
            return await rt.swarm_busy()
        finally:
            rt.process.client.global_status = original

    assert asyncio.run(rt.call(check())) is True


def test_refresh_waits_out_swarmuis_debounce_and_may_take_long(tmp_path):
    # SwarmUI skips TriggerRefresh within its debounce of its start or of the last refresh, and a real
    # refresh outlasts the ordinary API timeout (here 1 s against a 2 s rescan).
    token = "refresh-test-token-0123456789"
    with configured_worker(tmp_path, FAKE_SWARMUI_REFRESH_DEBOUNCE="3", SWARMUI_REFRESH_DEBOUNCE_SECONDS="3",
                           FAKE_SWARMUI_REFRESH_SECONDS="2", SWARMUI_HTTP_TIMEOUT="1",
                           SWARM_ACCESS_TOKEN=token) as env:
        assert call({"action": "ready"})["ready"] is True
        models = tmp_path / "volume" / "SwarmUI" / "Models"
        (models / "Lora" / "fresh.safetensors").write_bytes(b"w")
        out = call({"action": "models", "subtypes": ["LoRA"]})
        assert out["success"] is True and "fresh.safetensors" in out["models"]["LoRA"]
        # a generation naming a model put on the volume since is refreshed for, not refused
        (models / "Stable-Diffusion" / "late_model.safetensors").write_bytes(b"w")
        gen = call({"action": "generate", "params": {"prompt": "x", "model": "late_model", "steps": 1}})
        assert gen["success"] is True, gen

        # a client's own TriggerRefresh through the gateway, right after the worker's refresh
        (models / "Lora" / "for_the_client.safetensors").write_bytes(b"w")

        async def client_refresh():
            async with SwarmUIClient(f"http://127.0.0.1:{env['SWARM_PUBLIC_PORT']}", token=token) as c:
                await c.trigger_refresh(timeout=30)
                return (await c.list_models("LoRA")).names

        assert "for_the_client.safetensors" in asyncio.run(client_refresh())


def test_lease_end_interrupts_the_leases_generations_only(worker):
    from handlers.swarm_worker.handler import handler

    async def live_gens() -> int:
        rt = runtime()
        return (await rt.call(rt.process.client.global_status()))["status"]["live_gens"]

    async def go():
        rt = runtime()
        job = asyncio.create_task(handler({"id": "gen-beside-lease", "input": {"action": "generate", "params": {
            "prompt": "beside the lease", "model": SDXL, "steps": 150}}}))  # 1.5 s
        lease_task = asyncio.create_task(handler({"id": "lease-x", "input": {
            "action": "lease", "idle_seconds": 60, "startup_grace_seconds": 60}}))
        deadline = time.monotonic() + 10
        while (rt.leases.current is None or rt.leases.current.published is None) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        client = SwarmUIClient(rt.cfg.public_base_url(), token=rt.leases.current.token)
        leased = asyncio.create_task(client.generate({"prompt": "the lease's", "steps": 2000}))  # 20 s
        while await live_gens() < 2:
            assert time.monotonic() < deadline, "both generations should be running"
            await asyncio.sleep(0.02)
        lease_task.cancel()  # the client released its lease
        with pytest.raises(asyncio.CancelledError):
            await lease_task
        with pytest.raises(SwarmUIError):
            await leased  # its socket was closed with the lease
        await client.close()
        out = await job
        await asyncio.sleep(0.1)
        return out, await live_gens()

    assert call({"action": "ready"})["ready"] is True
    out, live = asyncio.run(go())
    assert out["success"] is True  # the generate job beside the lease was not interrupted
    assert live == 0  # the lease's generation stopped instead of running its 20 s


# -- the image build's pre-warm (against the stand-in: no GPU, SwarmUI's first-start installs) -----------


def _prewarm(tmp: Path, **extra: str) -> subprocess.CompletedProcess:
    from tests.swarm_helpers import ROOT, worker_env

    (tmp / "t").mkdir(exist_ok=True)
    env = {**os.environ, **worker_env(tmp), "FAKE_SWARMUI_NO_GPU": "1", "FAKE_SWARMUI_LIB_DIR": str(tmp / "lib"),
           "TMPDIR": str(tmp / "t"), **extra}
    return subprocess.run([sys.executable, "-m", "handlers.swarm_worker.prewarm", "--timeout", "20"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)


def test_prewarm_boots_on_the_cpu_and_leaves_nothing_to_install(tmp_path):
    proc = _prewarm(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "first boot installed 3 package(s): Installing 'rembg'" in proc.stderr
    assert "ComfyUI arguments for this boot: --cpu" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "lib").iterdir()) == ["onnxruntime", "rembg", "ultralytics"]
    assert not list((tmp_path / "t").iterdir())  # its data folder and logs are gone


def test_prewarm_fails_the_build_when_swarmui_would_still_install_at_start(tmp_path):
    proc = _prewarm(tmp_path, FAKE_SWARMUI_PIP_OFFLINE="1")
    assert proc.returncode == 1
    assert "SwarmUI still installs at start after the pre-warm boot" in proc.stderr
    assert "Installing 'rembg'" in proc.stderr


def test_prewarm_fails_the_build_when_swarmui_does_not_come_up(tmp_path):
    proc = _prewarm(tmp_path, FAKE_SWARMUI_FAIL_START="1")
    assert proc.returncode == 1 and "pre-warm failed: SwarmUI exited with code 1 while starting" in proc.stderr
    assert "simulated startup failure" in proc.stderr  # SwarmUI's own last lines, for the build log


def test_prewarm_cpu_flag_is_for_that_boot_only(tmp_path, monkeypatch):
    from handlers.swarm_worker.config import WorkerConfig
    from handlers.swarm_worker.prewarm import installs_in, prewarm_config

    monkeypatch.setenv("SWARMUI_COMFY_EXTRA_ARGS", "--lowvram")
    monkeypatch.setenv("SWARMUI_DIR", "/opt/SwarmUI")
    monkeypatch.delenv("SWARMUI_LAUNCH_CMD", raising=False)
    runtime_cfg = WorkerConfig.from_env()
    cfg = prewarm_config(runtime_cfg, tmp_path, 900)
    assert cfg.comfy_extra_args == "--lowvram --cpu" and runtime_cfg.comfy_extra_args == "--lowvram"
    assert cfg.launch_cmd.endswith("--loglevel Debug") and cfg.model_roots == [Path("/opt/SwarmUI/Models")]
    assert installs_in(["12:00:00.000 [Debug] [Load ComfyUI Self-Starting #0] Updating 'av' for ComfyUI...",
                        "12:00:01.000 [Debug] [Load ComfyUI Self-Starting #0] Done Updating 'av' for ComfyUI.",
                        "12:00:01.000 [Debug] [Load ComfyUI Self-Starting #0] Will validate required libs..."]) == [
        "Updating 'av'"]
