"""The job contract: errors, validation messages, progress, timings, redaction of results."""

import asyncio
import logging
import threading

import pytest
from pydantic import BaseModel, ConfigDict, Field

from common import jobs
from common.jobs import (
    JobError,
    Progress,
    Timings,
    error_result,
    parse_input,
    run_job,
    run_job_async,
    to_thread_stoppable,
)
from common.uploads.spec import UploadSpec


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1)
    steps: int = Field(6, ge=1, le=100)
    output: UploadSpec | None = None


def test_validation_error_names_each_field_once():
    with pytest.raises(JobError) as info:
        parse_input(_Input, {"prompt": "", "steps": 500, "colour": "red"})
    err = info.value
    assert err.code == "invalid_input"
    assert sorted(d.split(":")[0] for d in err.details) == ["colour", "prompt", "steps"]
    assert "colour: unknown field" in err.details
    assert any(d.startswith("steps: ") and "100" in d for d in err.details)


def test_nested_field_paths_and_non_object_input():
    with pytest.raises(JobError) as info:
        parse_input(_Input, {"prompt": "x", "output": {"method": "s3", "s3": {"presign_expiry_seconds": 8 * 86400}}})
    assert info.value.details[0].startswith("output.s3.presign_expiry_seconds: ")
    with pytest.raises(JobError, match="expected a JSON object"):
        parse_input(_Input, ["not", "a", "dict"])


def test_presigned_put_spec_needs_url_and_is_implied_by_it():
    assert UploadSpec.model_validate({"upload_url": "https://h/x?sig=1"}).method == "presigned_put"
    with pytest.raises(JobError, match="output.method: method 'presigned_put' needs 'upload_url'|needs 'upload_url'"):
        parse_input(_Input, {"prompt": "x", "output": {"method": "presigned_put"}})


def test_error_result_shapes():
    r = error_result(JobError("download_failed", "https://h/a.zip: 404", ["attempt 1: 404"]))
    assert r == {"error": "download_failed: https://h/a.zip: 404", "error_code": "download_failed",
                 "details": ["attempt 1: 404"]}
    assert error_result(TimeoutError())["error_code"] == "timeout"
    assert error_result(asyncio.CancelledError())["error_code"] == "cancelled"
    r = error_result(KeyError("boom"))
    assert r["error_code"] == "internal" and "Traceback" not in r["error"]
    with pytest.raises(ValueError):
        JobError("not_a_code", "x")


def test_run_job_success_adds_timings_and_version(monkeypatch):
    monkeypatch.setenv("WORKER_VERSION", "1.2.3")

    def body(job, timings):
        with timings.stage("work"):
            pass
        return {"status": "ok", "download_url": "https://s3/x?X-Amz-Signature=abc"}

    out = run_job({"id": "j1", "input": {}}, body)
    assert out["status"] == "ok"
    assert out["worker_version"] == "1.2.3"
    assert set(out["timings"]) == {"work", "total"}
    # the download link is what the caller asked for: kept intact
    assert out["download_url"].endswith("X-Amz-Signature=abc")


def test_run_job_failure_is_an_error_result_and_logs_traceback(caplog):
    def body(job, timings):
        raise RuntimeError("kaput")

    with caplog.at_level(logging.ERROR):
        out = run_job({"id": "j2", "input": {}}, body)
    assert out["error_code"] == "internal" and "kaput" in out["error"]
    assert "Traceback" in caplog.text


def test_secret_in_input_never_reaches_logs_progress_or_result(caplog):
    secret = "sk-live-0123456789abcdef"
    upload_url = "https://bucket.s3.amazonaws.com/o.zip?X-Amz-Signature=deadbeefcafe&X-Amz-Credential=zz"
    job = {"id": "j3", "input": {"api_keys": {"gemini_api_key": secret}, "output": {"upload_url": upload_url}}}
    progress = Progress(job, min_interval=0, send_to_runpod=False)

    def body(job, timings):
        logging.getLogger("worker").warning("calling with key %s and url %s", secret, upload_url)
        progress.update("caption", 10, f"using {secret}")
        raise JobError("upload_failed", f"PUT {upload_url} failed for key {secret}")

    handler = logging.StreamHandler()
    from common.redaction import RedactingFormatter

    handler.setFormatter(RedactingFormatter("%(message)s"))
    records: list[str] = []
    handler.emit = lambda record: records.append(handler.format(record))  # type: ignore[method-assign]
    logging.getLogger().addHandler(handler)
    try:
        out = run_job(job, body)
    finally:
        logging.getLogger().removeHandler(handler)
    text = " ".join(records) + repr(out) + repr(progress.sent)
    assert secret not in text
    assert "deadbeefcafe" not in text
    assert out["error_code"] == "upload_failed" and "***" in out["error"]


def test_progress_rate_limit_stage_changes_and_close():
    p = Progress({"id": "j"}, min_interval=60, send_to_runpod=False)
    assert p.update("download", 10)
    assert not p.update("download", 20)  # within the interval
    assert p.update("caption", 0)  # stage change always goes out
    assert p.update("caption", 50, force=True)
    p.close()
    assert not p.update("upload", 100, force=True)
    assert [s["stage"] for s in p.sent] == ["download", "caption", "caption"]
    assert p.sent[-1]["percent"] == 50.0


def test_progress_calls_runpod_only_under_its_worker_loop(monkeypatch):
    calls = []
    import runpod

    monkeypatch.setattr(runpod.serverless, "progress_update", lambda job, data: calls.append(data))
    monkeypatch.delenv("RUNPOD_WEBHOOK_GET_JOB", raising=False)
    Progress({"id": "j"}, min_interval=0).update("a")
    assert calls == []
    monkeypatch.setenv("RUNPOD_WEBHOOK_GET_JOB", "http://127.0.0.1:1/job-take/$ID?x")
    monkeypatch.setenv("RUNPOD_WEBHOOK_POST_OUTPUT", "http://127.0.0.1:1/job-done")
    Progress({"id": "j"}, min_interval=0).update("b", 5.0)
    assert calls == [{"stage": "b", "percent": 5.0}]


def test_progress_sink_failure_does_not_fail_the_job():
    got = []

    def bad_sink(data):
        raise OSError("disk full")

    p = Progress({"id": "j"}, min_interval=0, sinks=[bad_sink, got.append], send_to_runpod=False)
    assert p.update("training", 1.0, epoch=1)
    assert got == [{"stage": "training", "percent": 1.0, "epoch": 1}]


def test_timings_accumulate():
    t = Timings()
    with t.stage("a"):
        pass
    t.add("a", 1.0)
    d = t.as_dict()
    assert d["a"] >= 1.0 and d["total"] >= 0


def test_async_job_cancellation_propagates():
    async def body(job, timings):
        await asyncio.sleep(10)
        return {}

    async def main():
        task = asyncio.create_task(run_job_async({"id": "c", "input": {}}, body))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_async_job_error_result():
    async def body(job, timings):
        raise JobError("engine_failed", "exit 1")

    out = asyncio.run(run_job_async({"id": "e", "input": {}}, body))
    assert out["error"] == "engine_failed: exit 1"
    assert out["worker_version"] == jobs.worker_version()


def test_to_thread_stoppable_tells_the_thread_when_nobody_waits_any_more():
    started, stopped = threading.Event(), threading.Event()

    def work(n: int, *, stop: threading.Event) -> int:
        started.set()
        if stop.wait(10):
            stopped.set()
        return n

    async def go():
        assert await to_thread_stoppable(lambda *, stop: stop.is_set()) is False  # not set while awaited
        task = asyncio.create_task(to_thread_stoppable(work, 7))
        await asyncio.to_thread(started.wait, 10)
        task.cancel()  # the job was cancelled
        try:
            await task
        except asyncio.CancelledError:
            pass
        return await asyncio.to_thread(stopped.wait, 5)

    assert asyncio.run(go()) is True


def test_progress_from_a_thread_without_the_jobs_context_still_masks_its_secrets():
    from common.redaction import register_secret, secret_scope

    with secret_scope():
        register_secret("job-only-secret-99")
        progress = Progress({"id": "j"}, min_interval=0, send_to_runpod=False)
    # e.g. boto3's transfer threads, which report bytes sent and never saw the job's context
    worker = threading.Thread(target=lambda: progress.update("upload", 10, "key job-only-secret-99 in use"))
    worker.start()
    worker.join()
    assert progress.sent[0]["message"] == "key *** in use"
