"""The controlnet-pyworker engine on tiny random-weight models: real diffusers pipelines on CPU."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from common.jobs import JobError
from handlers.controlnet_pyworker import manifest as manifest_mod
from handlers.controlnet_pyworker import schema, workload
from handlers.controlnet_pyworker.engine import Engine, QueueFull, SerialQueue
from handlers.controlnet_pyworker.settings import Settings
from tests.controlnet_fixtures import body
from tests.fakes.http_files import FileServer, Route


def run(engine, **kw):
    req = schema.validate(body(**kw), engine.manifest)
    with engine.queue.admit():
        return engine.generate(req)


def pixels(gen, i=0) -> np.ndarray:
    return np.asarray(gen.images[i], dtype=np.int16)


def png_b64(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("model,steps,cfg,scheduler", [
    ("lightning", 6, 2.0, "euler_trailing"),
    ("hyper", 8, 6.0, "ddim_trailing"),
    ("base", 25, 7.5, "euler"),
])
def test_each_variant_uses_its_defaults(cn_engine, model, steps, cfg, scheduler):
    # base's 25 steps are cut to 3 to stay fast; the default is checked through the manifest
    over = {"steps": 3} if model == "base" else {}
    gen = run(cn_engine, model=model, **over)
    assert cn_engine.manifest.variants[model].steps == steps
    assert (gen.variant, gen.cfg, gen.scheduler) == (model, cfg, scheduler)
    assert gen.steps == over.get("steps", steps)
    assert gen.images[0].size == (256, 256)
    assert type(cn_engine.get(model).pipe.scheduler).__name__ == {
        "euler_trailing": "EulerDiscreteScheduler", "ddim_trailing": "DDIMScheduler",
        "euler": "EulerDiscreteScheduler"}[scheduler]


@pytest.mark.parametrize("model,requested,effective,cls,spacing", [
    ("lightning", "euler", "euler_trailing", "EulerDiscreteScheduler", "trailing"),
    ("hyper", "euler", "euler_trailing", "EulerDiscreteScheduler", "trailing"),
    ("base", "euler", "euler", "EulerDiscreteScheduler", "leading"),
    ("lightning", "dpm_sde", "dpm_sde", "DPMSolverSDEScheduler", None),
])
def test_scheduler_choice(cn_engine, model, requested, effective, cls, spacing):
    gen = run(cn_engine, model=model, scheduler=requested, steps=3)
    sched = cn_engine.get(model).pipe.scheduler
    assert gen.scheduler == effective and type(sched).__name__ == cls
    if spacing:
        assert sched.config.timestep_spacing == spacing


def test_same_seed_same_image_and_other_seed_differs(cn_engine):
    a, b, c = run(cn_engine, seed=11), run(cn_engine, seed=11), run(cn_engine, seed=12)
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))
    x, y = run(cn_engine, seed=3, scheduler="dpm_sde", steps=3), run(cn_engine, seed=3, scheduler="dpm_sde", steps=3)
    assert np.array_equal(pixels(x), pixels(y)), "dpm_sde's noise sampler must be seeded too"


def test_random_seed_is_reported_and_reproduces(cn_engine):
    gen = run(cn_engine, seed=None)
    again = run(cn_engine, seed=gen.seeds[0])
    assert np.array_equal(pixels(gen), pixels(again))


def test_eras_switch_by_adapter_weight_without_reloading(cn_engine):
    plain = run(cn_engine)
    era = run(cn_engine, era="wilderness")
    loads = dict(cn_engine.stats)
    weak = run(cn_engine, era="wilderness", lora_strength=0.3)
    era_again = run(cn_engine, era="wilderness")
    plain_again = run(cn_engine)
    assert cn_engine.stats["lora_loads"] == loads["lora_loads"], "strength/era switches must not reload LoRAs"
    assert cn_engine.stats["variant_loads"] == loads["variant_loads"]
    assert not np.array_equal(pixels(plain), pixels(era))
    assert not np.array_equal(pixels(era), pixels(weak))
    assert np.array_equal(pixels(era), pixels(era_again))
    assert np.array_equal(pixels(plain), pixels(plain_again)), "no era must mean no adapter at all"
    assert era.lora_strength == cn_engine.manifest.eras["wilderness"].weight and weak.lora_strength == 0.3
    other = run(cn_engine, era="future")
    assert cn_engine.stats["lora_loads"] == loads["lora_loads"] + 1
    assert not np.array_equal(pixels(other), pixels(era))
    assert run(cn_engine, era="drone").lora_strength == 0.8  # the manifest's drone weight


def test_speed_lora_is_fused_not_an_adapter(cn_engine):
    import torch

    light, base = cn_engine.get("lightning").pipe, cn_engine.get("base").pipe
    assert not any(".speed" in n for n, _ in light.unet.named_parameters()), "no speed adapter layers remain"
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    w_light = dict(light.unet.named_modules())[name]
    w_base = dict(base.unet.named_modules())[name]
    wl = getattr(w_light, "base_layer", w_light).weight
    wb = getattr(w_base, "base_layer", w_base).weight
    assert not torch.equal(wl, wb), "the Lightning LoRA must be merged into the lightning UNet"


def test_depth_sources(cn_engine):
    from PIL import Image

    grad = np.tile(np.linspace(0, 255, 128, dtype=np.uint8), (96, 1))
    gray_png = png_b64(Image.fromarray(grad, mode="L"))
    rgb = Image.fromarray(np.stack([grad] * 3, axis=-1), mode="RGB")
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG")
    rgb_jpeg = base64.b64encode(buf.getvalue()).decode()
    flat_png = png_b64(Image.new("L", (64, 64), 0))
    a = run(cn_engine, mock_depth=None, depth_map_b64=gray_png, controlnet_strength=2.0)
    b = run(cn_engine, mock_depth=None, depth_map_b64=rgb_jpeg, controlnet_strength=2.0)
    c = run(cn_engine, mock_depth=None, depth_map_b64=flat_png, controlnet_strength=2.0)
    m = run(cn_engine, controlnet_strength=2.0)
    assert a.depth_source == "depth_map_b64" and m.depth_source == "mock_depth"
    assert a.images[0].size == (256, 256)  # a 128x96 map is resized to the output size
    assert not np.array_equal(pixels(a), pixels(c)) and not np.array_equal(pixels(a), pixels(m))
    assert np.abs(pixels(a) - pixels(b)).mean() < np.abs(pixels(a) - pixels(c)).mean()


def test_mock_depth_is_a_deterministic_gradient():
    from handlers.controlnet_pyworker import depth

    one, two = np.asarray(depth.mock(256, 192)), np.asarray(depth.mock(256, 192))
    assert one.shape == (192, 256, 3) and np.array_equal(one, two)
    assert one[-1].mean() > one[0].mean() + 100  # near (bright) at the bottom


def test_auto_depth_from_image(cn_engine):
    from PIL import Image

    rng = np.random.default_rng(0)
    photo = png_b64(Image.fromarray(rng.integers(0, 255, (80, 120, 3), dtype=np.uint8), mode="RGB"))
    before = cn_engine.stats["depth_model_loads"]
    gen = run(cn_engine, mock_depth=None, auto_depth=True, image_b64=photo)
    run(cn_engine, mock_depth=None, auto_depth=True, image_b64=photo, seed=8)
    assert gen.depth_source == "auto_depth" and gen.images[0].size == (256, 256)
    assert cn_engine.stats["depth_model_loads"] == max(before, 1)
    ctrl, _ = cn_engine.depth_image(schema.validate(body(mock_depth=None, auto_depth=True, image_b64=photo),
                                                    cn_engine.manifest))
    arr = np.asarray(ctrl)
    assert arr.shape == (256, 256, 3) and arr.min() == 0 and arr.max() == 255  # normalized estimate


def test_undecodable_depth_map_is_invalid_input(cn_engine):
    junk = base64.b64encode(b"definitely not an image").decode()
    with pytest.raises(JobError) as err:
        run(cn_engine, mock_depth=None, depth_map_b64=junk)
    assert err.value.code == "invalid_input" and "depth_map_b64" in err.value.message


def test_num_images_gives_one_seed_each(cn_engine):
    gen = run(cn_engine, num_images=2, seed=40)
    assert gen.seeds == [40, 41] and len(gen.images) == 2
    assert not np.array_equal(pixels(gen, 0), pixels(gen, 1))


def test_stop_ends_the_denoising_loop_at_the_next_step(cn_engine):
    req = schema.validate(body(steps=8, seed=3), cn_engine.manifest)
    stop, steps = threading.Event(), []

    def on_step(i: int, total: int) -> None:
        steps.append(i)
        if i == 2:
            stop.set()  # the job is cancelled during step 2

    before = cn_engine.stats["generations"]
    with cn_engine.queue.admit(), pytest.raises(JobError) as err:
        cn_engine.generate(req, on_step=on_step, stop=stop)
    assert err.value.code == "cancelled" and "stopped after step 2/8" in err.value.message
    assert steps == [1, 2]  # no denoising step ran after the stop
    assert cn_engine.stats["generations"] == before
    with cn_engine.queue.admit(), pytest.raises(JobError) as err:  # cancelled while it waited in the queue
        cn_engine.generate(req, on_step=on_step, stop=stop)
    assert "before it reached the device" in err.value.message and steps == [1, 2]
    assert run(cn_engine, steps=2).steps == 2  # the engine goes on as before


def test_lru_keeps_at_most_max_loaded(cn_manifest, cn_models):
    eng = Engine(cn_manifest, cn_models, device="cpu", max_loaded=2, fetch_missing=False)
    eng.get("lightning")
    eng.get("hyper")
    eng.get("lightning")          # refresh: hyper is now least recently used
    eng.get("base")
    assert eng.loaded() == ["lightning", "base"]
    assert eng.stats["variant_loads"] == 3
    eng.get("lightning")
    assert eng.stats["variant_loads"] == 3


def test_serial_queue_bounds_waiting():
    q = SerialQueue(max_waiting=1)
    running = q.admit()
    waiting = q.admit()
    with pytest.raises(QueueFull) as full:
        q.admit()
    assert full.value.retry_after >= 1
    running.release()
    third = q.admit()
    waiting.release()
    third.release()
    assert q.pending == 0


def test_missing_files_are_fetched_on_first_use_with_checksum(cn_manifest, cn_models, tmp_path):
    """An era LoRA not on disk is downloaded from its manifest source (here a local server) and verified."""
    lora = cn_models / "loras" / "experimance_future.safetensors"
    with FileServer() as httpd:
        httpd.add("/future.safetensors", Route(lora.read_bytes()))
        models = tmp_path / "models"
        models.mkdir()
        for entry in cn_models.iterdir():
            if entry.name not in ("loras", "manifest.json"):
                (models / entry.name).symlink_to(entry)
        data = json.loads((cn_models / "manifest.json").read_text())
        url = httpd.url("/future.safetensors")
        comp = data["components"]["lora-era-future"]
        comp["path"] = "loras/fetched_future.safetensors"
        comp["files"][0]["source"] = url
        sha = hashlib.sha256(lora.read_bytes()).hexdigest()
        comp["files"][0]["sha256"] = sha
        for key in ("lora-lightning-8step",):  # the variant's own LoRA comes from disk
            data["components"][key]["path"] = str((cn_models / data["components"][key]["path"]).relative_to(cn_models))
            (models / "loras").mkdir(exist_ok=True)
            (models / data["components"][key]["path"]).symlink_to(cn_models / data["components"][key]["path"])
        (models / "manifest.json").write_text(json.dumps(data))
        eng = Engine(manifest_mod.load(models / "manifest.json"), models, device="cpu")
        gen = run(eng, era="future")
        target = models / "loras" / "fetched_future.safetensors"
        assert gen.era == "future" and target.is_file()
        assert hashlib.sha256(target.read_bytes()).hexdigest() == sha

        comp["path"] = "loras/bad_future.safetensors"
        comp["files"][0]["sha256"] = "0" * 64
        (models / "manifest.json").write_text(json.dumps(data))
        eng = Engine(manifest_mod.load(models / "manifest.json"), models, device="cpu")
        with pytest.raises(JobError) as err:
            run(eng, era="future")
        assert err.value.code == "download_failed" and "sha256" in err.value.message.lower()
        assert not (models / "loras" / "bad_future.safetensors").exists()


def test_workload_units():
    base = workload.units(body(width=1024, height=1024))
    assert base == pytest.approx(6 * 2 * workload.CONTROLNET_FACTOR)
    assert workload.units(body(width=512, height=512)) == pytest.approx(base / 4)
    assert workload.units(body(width=1024, height=1024, cfg=1.0)) == pytest.approx(base / 2)
    assert workload.units(body(width=1024, height=1024, model="base")) == pytest.approx(base * 25 / 6 * 1, rel=1e-3)
    assert workload.units(body(width=1024, height=1024, era="future")) == pytest.approx(base * workload.LORA_FACTOR)
    assert workload.units(body(width=1024, height=1024, scheduler="dpm_sde")) == pytest.approx(base * 2)
    assert workload.units(body(width=1024, height=1024, num_images=3)) == pytest.approx(base * 3)
    assert workload.calculate({"width": "wide"}) == workload.FALLBACK
    assert workload.calculate({"steps": -3}) == workload.FALLBACK


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d["variants"]["lightning"].update(scheduler="lcm"), "variants.lightning.scheduler"),
    (lambda d: d["variants"]["hyper"].update(base="nope"), "variants.hyper.base: unknown component"),
    (lambda d: d["components"]["vae-fp16-fix"]["files"][0].update(sha256="abc"), "sha256"),
    (lambda d: d["components"]["vae-fp16-fix"]["files"][0].update(source="ftp://x/y"), "source: scheme"),
    (lambda d: d["components"]["vae-fp16-fix"].update(path="../etc"), "path: must be relative"),
    (lambda d: d["eras"]["future"].update(lora="vae-fp16-fix"), "expected lora"),
])
def test_manifest_errors_name_the_entry(mutate, message):
    data = json.loads(manifest_mod.PACKAGED.read_text())
    mutate(data)
    with pytest.raises(manifest_mod.ManifestError, match=message.replace(".", r"\.")):
        manifest_mod.parse(data)


def test_packaged_manifest_and_lookup_order(monkeypatch, cn_models, tmp_path):
    m = manifest_mod.load(manifest_mod.PACKAGED)
    assert set(m.variants) == {"lightning", "hyper", "base"} and m.default_variant == "lightning"
    assert set(m.eras) == {"wilderness", "pre_industrial", "future", "drone"}
    assert (m.variants["lightning"].steps, m.variants["lightning"].cfg) == (6, 2.0)
    assert (m.variants["hyper"].steps, m.variants["hyper"].cfg) == (8, 6.0)
    assert (m.variants["base"].steps, m.variants["base"].cfg) == (25, 7.5)
    monkeypatch.delenv("MODEL_MANIFEST", raising=False)
    monkeypatch.setenv("MODELS_DIR", str(tmp_path))
    assert manifest_mod.manifest_path(Settings.from_env()) == manifest_mod.PACKAGED
    monkeypatch.setenv("MODELS_DIR", str(cn_models))
    assert manifest_mod.manifest_path(Settings.from_env()) == cn_models / "manifest.json"
    monkeypatch.setenv("MODEL_MANIFEST", str(tmp_path / "mine.json"))
    assert manifest_mod.manifest_path(Settings.from_env()) == Path(tmp_path / "mine.json")
    tiny = manifest_mod.load(cn_models / "manifest.json")
    assert all(f.sha256 for c in tiny.components.values() for f in c.files), "tiny manifest pins every hash"
    assert {c.path for c in tiny.components.values()} == {c.path for c in m.components.values()}


def test_non_square_output(cn_engine):
    gen = run(cn_engine, width=384, height=256, steps=2)
    assert gen.images[0].size == (384, 256) and (gen.width, gen.height) == (384, 256)
