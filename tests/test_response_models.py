"""Real results of the three workers validate against the documented response models
(`handlers/*/responses.py`, `common/result_models.py`), which forbid undocumented keys: a result
field added or renamed without its documentation fails here."""

from __future__ import annotations

import asyncio

import pytest

from common.result_models import ErrorResult, UploadRecord
from tests.controlnet_fixtures import body


def test_controlnet_inline_result_and_error(cn_engine):
    from handlers.controlnet_pyworker import service
    from handlers.controlnet_pyworker.responses import GenerateResponse

    out = service.respond({"id": "doc-1", "input": body(seed=3, steps=2, num_images=2)}, cn_engine)
    res = GenerateResponse.model_validate(out)
    assert len(res.images) == 2 and res.seeds == [3, 4] and res.upload is None

    bad = service.respond({"id": "doc-2", "input": body(width=100)}, cn_engine)
    err = ErrorResult.model_validate(bad)
    assert err.error_code == "invalid_input" and err.details[0].startswith("width:")


def test_controlnet_uploaded_result(cn_engine, put_server):
    from handlers.controlnet_pyworker import service
    from handlers.controlnet_pyworker.responses import GenerateResponse

    out = service.respond({"id": "doc-3", "input": body(steps=2, output={"upload_url": put_server.url("cn.png")})},
                          cn_engine)
    res = GenerateResponse.model_validate(out)
    assert res.images is None and res.upload.download_method == "presigned_put"


def test_trainer_dry_run_and_training_results(trainer_env, dataset_server, put_server):
    from handlers.diffusion_pipe_trainer.responses import DryRunResult, TrainResult
    from tests.test_trainer_job import image_zip, run_handler, seed_weights

    url = dataset_server.put_zip("doc.zip", image_zip(4, captioned=(0, 1, 2, 3)))
    dataset = {"type": "precaptioned", "images_url": url, "trigger_word": "ohwx"}
    dry = run_handler({"model_type": "sdxl", "dry_run": True, "dataset": dataset}, job_id="doc-dry")
    assert DryRunResult.model_validate(dry).estimated_total_steps > 0

    seed_weights(trainer_env, "qwen")
    done = run_handler({"model_type": "qwen", "dataset": dataset,
                        "training": {"epochs": 2, "save_every_n_epochs": 1, "gradient_accumulation_steps": 1},
                        "output": {"upload_url": put_server.url("lora.zip")}}, job_id="doc-train")
    res = TrainResult.model_validate(done)
    assert res.latest_epoch == "epoch2" and res.output.attempts[0].ok

    failed = run_handler({"model_type": "sd15"}, job_id="doc-bad")
    assert ErrorResult.model_validate(failed).error_code == "invalid_input"


def test_trainer_result_that_drifts_from_its_model_fails_the_job(trainer_env, dataset_server, monkeypatch):
    """The pipeline checks its result against the response model: an undocumented key fails every job test."""
    from handlers.diffusion_pipe_trainer import pipeline
    from tests.test_trainer_job import image_zip, run_handler

    url = dataset_server.put_zip("drift.zip", image_zip(4, captioned=(0, 1, 2, 3)))
    job = {"model_type": "sdxl", "dry_run": True, "dataset": {"type": "precaptioned", "images_url": url}}
    documented = pipeline._dry_run_result
    monkeypatch.setattr(pipeline, "_dry_run_result", lambda *a: {**documented(*a), "surprise": 1})
    out = run_handler(job, job_id="doc-drift")
    assert out["error_code"] == "internal" and "surprise" in out["error"]


@pytest.fixture(scope="module")
def swarm_worker(tmp_path_factory):
    from tests.swarm_helpers import configured_worker

    with configured_worker(tmp_path_factory.mktemp("doc-swarm")) as env:
        yield env


def test_swarm_generate_and_lease_results(swarm_worker):
    from handlers.swarm_worker.actions import lease_session
    from handlers.swarm_worker.responses import ActionFailure, GenerateResult, LeaseGranted, LeaseReleased
    from tests.swarm_helpers import call

    out = call({"action": "generate", "params": {"prompt": "a fox", "model": "OfficialStableDiffusion/sd_xl_base_1.0",
                                                 "steps": 2, "seed": 1}}, "doc-gen")
    assert GenerateResult.model_validate(out).delivery == "inline"

    async def lease() -> list[dict]:
        job = {"id": "doc-lease", "input": {"action": "lease", "idle_seconds": 5, "startup_grace_seconds": 0.5,
                                            "max_lease_seconds": 30}}
        return [item async for item in lease_session(job)]

    first, last = asyncio.run(lease())
    assert LeaseGranted.model_validate(first).protocol == 2
    assert LeaseReleased.model_validate(last).reason == "startup_grace_expired"

    assert ActionFailure.model_validate(call({"action": "dance"})).error_id == "unknown_action"
    bad = call({"action": "generate", "params": {"prompt": "x"}, "surprise": 1})
    assert ErrorResult.model_validate(bad).error_code == "invalid_input"


def test_upload_record_refuses_undocumented_keys():
    record = {"download_url": "https://x/y", "download_method": "s3", "expires_in_days": 7, "size_bytes": 1,
              "sha256": "0" * 64, "attempts": [{"method": "s3", "ok": True}]}
    UploadRecord.model_validate(record)
    with pytest.raises(ValueError, match="surprise"):
        UploadRecord.model_validate({**record, "surprise": 1})


def test_upload_record_is_checked_where_it_is_built(put_server, monkeypatch, tmp_path):
    """`common.uploads.upload` checks its record against UploadRecord: a method answering with a value
    of the wrong kind is a bug found by every upload test, not a record that merely looks right."""
    from common.uploads import presigned_put, upload

    real = presigned_put.upload
    monkeypatch.setattr(presigned_put, "upload", lambda *a, **kw: {**real(*a, **kw), "expires_in_days": "soon"})
    out = tmp_path / "out.png"
    out.write_bytes(b"png")
    with pytest.raises(RuntimeError, match=r"does not match UploadRecord: expires_in_days"):
        upload([out], {"upload_url": put_server.url("x.png")}, job_id="doc-upload")
