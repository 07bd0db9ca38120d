"""Whole trainer jobs through the real handler: dataset served on 127.0.0.1, tiny JoyCaption model,
Gemini stand-in, the labeled diffusion-pipe stand-in, uploads to local servers."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from pathlib import Path

import pytest
import tomllib

from handlers.diffusion_pipe_trainer.models import REGISTRY
from tests.trainer_fixtures import GEMINI_KEY, mp4, png


def run_handler(job_input: dict, job_id: str = "job-1") -> dict:
    from handlers.diffusion_pipe_trainer.handler import handler

    return asyncio.run(handler({"id": job_id, "input": job_input}))


def image_zip(n: int = 4, captioned: tuple[int, ...] = (0,), nested: bool = True) -> dict[str, bytes]:
    files = {}
    for i in range(n):
        stem = f"set/{'ab'[i % 2]}/img_{i // 2}" if nested else f"img_{i}"
        files[f"{stem}.png"] = png(i)
        if i in captioned:
            files[f"{stem}.txt"] = f"a photo number {i}".encode()
    files["__MACOSX/set/._img_0.png"] = b"junk"
    return files


def seed_weights(work: Path, model_type: str) -> None:
    """Stand-in weights: the folders the registry fetches, marked complete, so no download is attempted."""
    for item in REGISTRY[model_type].fetch:
        d = work / "models" / item.local_dir
        for rel in item.required:
            p = d / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            if "." in p.name:
                p.write_bytes(b"weights")
            else:
                p.mkdir(exist_ok=True)
        (d / ".complete").write_text(item.repo_id)


# ---------------------------------------------------------------- dry runs


def test_dry_run_captions_images_and_returns_configs(trainer_env, dataset_server):
    url = dataset_server.put_zip("imgs.zip", image_zip())
    res = run_handler({"model_type": "wan13", "dry_run": True, "caption": {"max_new_tokens": 6},
                       "dataset": {"type": "images", "images_url": url, "trigger_word": "ohwx", "image_repeats": 3},
                       "training": {"epochs": 4, "lr_scheduler": "cosine"}}, job_id="dry-1")
    assert res["status"] == "dry_run", res
    assert res["model_name"] == "Wan 1.3B" and res["job_id"] == "dry-1"
    images = trainer_env / "jobs" / "dry-1" / "dataset" / "images"
    cfg = tomllib.loads(res["configs"]["config.toml"])
    ds = tomllib.loads(res["configs"]["dataset.toml"])
    assert (trainer_env / "jobs" / "dry-1" / "config" / "config.toml").read_text() == res["configs"]["config.toml"]
    assert cfg["model"]["ckpt_path"] == str(trainer_env / "models" / "Wan2.1-T2V-1.3B")
    assert cfg["output_dir"] == str(trainer_env / "training_outputs" / "dry-1")
    assert cfg["lr_scheduler"] == "cosine" and cfg["epochs"] == 4
    assert ds["directory"] == [{"path": str(images), "num_repeats": 3}]
    # flattened, unique names, every image captioned once with the trigger word
    media = sorted(p.name for p in images.glob("*.png"))
    assert media == ["img_0.png", "img_1.png", "set_b_img_0.png", "set_b_img_1.png"]
    for m in media:
        text = (images / m).with_suffix(".txt").read_text().strip()
        assert text.startswith("ohwx, ") and text.count("ohwx") == 1
    assert (images / "img_0.txt").read_text().strip() == "ohwx, a photo number 0"  # existing caption kept
    assert res["dataset"]["images"] == 4 and res["dataset"]["captioned_images"] == 3
    assert res["dataset"]["kept_captions"] == 1
    # nothing fetched, nothing trained; model paths are where they would be
    assert res["model_paths"] == {"Wan-AI/Wan2.1-T2V-1.3B": str(trainer_env / "models" / "Wan2.1-T2V-1.3B")}
    assert not (trainer_env / "models" / "Wan2.1-T2V-1.3B").exists()
    assert not any((trainer_env / "training_outputs" / "dry-1").iterdir())
    assert res["estimated_total_steps"] == 4 * (4 * 3 // 4)
    assert set(res["timings"]) >= {"download", "caption", "config", "total"}
    assert not (trainer_env / "jobs" / "dry-1" / "downloads" / "images.archive").exists()


def test_dry_run_both_captions_videos_with_gemini(trainer_env, dataset_server, gemini):
    gemini.state.rate_limit_next = 1
    iurl = dataset_server.put_zip("b_imgs.zip", image_zip(2, captioned=(0, 1), nested=False))
    vurl = dataset_server.put_zip("b_vids.zip", {"clips/a.mp4": mp4(1), "clips/b.mov": mp4(2),
                                                 "clips/b.txt": b"ohwx, dancing"})
    res = run_handler({"model_type": "wan14b_t2v", "dry_run": True,
                       "dataset": {"type": "both", "images_url": iurl, "videos_url": vurl, "trigger_word": "ohwx",
                                   "video_repeats": 2},
                       "api_keys": {"gemini_api_key": GEMINI_KEY},
                       "training": {"frame_buckets": [1, 17]}}, job_id="dry-2")
    assert res["status"] == "dry_run", res
    videos = trainer_env / "jobs" / "dry-2" / "dataset" / "videos"
    assert (videos / "a.txt").read_text().startswith("ohwx, A person walks")
    assert (videos / "b.txt").read_text().strip() == "ohwx, dancing"  # kept
    assert len(gemini.state.uploads) == 1 and gemini.state.uploads[0]["size"] == len(mp4(1))
    assert gemini.state.rate_limited == 1
    ds = tomllib.loads(res["configs"]["dataset.toml"])
    assert ds["frame_buckets"] == [1, 17]
    assert [d["num_repeats"] for d in ds["directory"]] == [1, 2]
    assert res["dataset"]["captioned_videos"] == 1 and res["dataset"]["captioned_images"] == 0
    assert GEMINI_KEY not in json.dumps(res)


# ---------------------------------------------------------------- bad input, before any download


@pytest.mark.parametrize("job_input, field", [
    ({"model_type": "hunyuan", "dataset": {"type": "images", "images_url": "URL"}}, "model_type"),
    ({"dataset": {"type": "images", "images_url": "URL"}}, "model_type: Field required"),
    ({"model_type": "sdxl", "dataset": {"type": "images"}}, "needs 'images_url'"),
    ({"model_type": "wan13", "dataset": {"type": "videos", "videos_url": "URL"}}, "api_keys.gemini_api_key"),
    ({"model_type": "flux", "dataset": {"type": "images", "images_url": "URL"}}, "api_keys.huggingface_token"),
    ({"model_type": "sdxl", "dataset": {"type": "images", "images_url": "URL"}, "training": {"adapter": {"alpha": 8}}},
     "adapter.alpha"),
    ({"model_type": "sdxl", "dataset": {"type": "images", "images_url": "URL"},
      "output": {"method": "presigned_put"}}, "upload_url"),
    ({"model_type": "sdxl", "dataset": {"type": "images", "images_url": "URL"},
      "output": {"method": "s3"}}, "output.method: 's3' needs output.s3.bucket"),
])
def test_bad_input_fails_before_any_download(trainer_env, dataset_server, job_input, field):
    url = dataset_server.put_zip("never.zip", image_zip())
    before = len(dataset_server.requests)
    raw = json.loads(json.dumps(job_input).replace('"URL"', json.dumps(url)))
    res = run_handler(raw, job_id="bad")
    assert res["error_code"] == "invalid_input" and field in res["error"], res
    assert len(dataset_server.requests) == before
    assert not (trainer_env / "jobs" / "bad").exists()


def test_zip_slip_dataset_is_refused(trainer_env, dataset_server, tmp_path):
    url = dataset_server.put_zip("slip.zip", {"ok.png": png(1), "../../escaped.txt": b"pwned"})
    res = run_handler({"model_type": "sdxl", "dataset": {"type": "images", "images_url": url}, "dry_run": True},
                      job_id="slip")
    assert res["error_code"] == "unsafe_archive", res
    assert not list(tmp_path.rglob("escaped.txt"))


def test_non_archive_url_is_refused(trainer_env, dataset_server):
    url = dataset_server.put("page.zip", b"<!DOCTYPE html><html><body>Sign in to download</body></html>")
    res = run_handler({"model_type": "sdxl", "dataset": {"type": "images", "images_url": url}, "dry_run": True},
                      job_id="html")
    assert res["error_code"] == "invalid_input" and "not a zip or tar archive (HTML" in res["error"], res


def test_private_address_is_refused_without_the_switch(trainer_env, dataset_server, monkeypatch):
    monkeypatch.setenv("ALLOW_PRIVATE_DOWNLOADS", "0")
    url = dataset_server.put_zip("private.zip", image_zip())
    before = len(dataset_server.requests)
    res = run_handler({"model_type": "sdxl", "dataset": {"type": "images", "images_url": url}, "dry_run": True},
                      job_id="ssrf")
    assert res["error_code"] in ("download_failed", "invalid_input"), res
    assert "127.0.0.1" in res["error"] or "private" in res["error"] or "loopback" in res["error"]
    assert len(dataset_server.requests) == before


def test_precaptioned_dataset_with_missing_captions_lists_them(trainer_env, dataset_server):
    url = dataset_server.put_zip("pre.zip", image_zip(4, captioned=(0, 2), nested=False))
    res = run_handler({"model_type": "sdxl", "dataset": {"type": "precaptioned", "images_url": url},
                       "dry_run": True}, job_id="pre")
    assert res["error_code"] == "invalid_input", res
    assert "2 without a caption file: img_1.png, img_3.png" in res["error"]
    assert res["details"] == ["img_1.png", "img_3.png"]


def test_wrong_media_kind_names_what_was_found(trainer_env, dataset_server, gemini):
    url = dataset_server.put_zip("docs.zip", {"a.pdf": b"%PDF", "b.gif": b"GIF89a"})
    res = run_handler({"model_type": "sdxl", "dataset": {"type": "images", "images_url": url}, "dry_run": True},
                      job_id="kind")
    assert res["error_code"] == "invalid_input" and "no images found" in res["error"]
    assert ".pdf" in res["error"] and ".gif" in res["error"]


# ---------------------------------------------------------------- training with the stand-in engine


def test_crash_mid_epoch_is_engine_failed(trainer_env, dataset_server, monkeypatch):
    monkeypatch.setenv("FAKE_DIFFUSION_PIPE_MODE", "crash")
    seed_weights(trainer_env, "sdxl")
    url = dataset_server.put_zip("crash.zip", image_zip(4, captioned=(0, 1, 2, 3)))
    res = run_handler({"model_type": "sdxl", "dataset": {"type": "precaptioned", "images_url": url},
                       "training": {"epochs": 3, "gradient_accumulation_steps": 1}}, job_id="crash")
    assert res["error_code"] == "engine_failed" and "GPU ran out of memory" in res["error"], res
    assert any("CUDA out of memory" in d for d in res["details"])
    assert res["refresh_worker"] is True
    assert "Traceback" in (trainer_env / "jobs" / "crash" / "logs" / "train.log").read_text()


def test_hang_past_timeout_is_a_timeout(trainer_env, dataset_server, monkeypatch):
    monkeypatch.setenv("FAKE_DIFFUSION_PIPE_MODE", "hang")
    seed_weights(trainer_env, "z_image_turbo")
    url = dataset_server.put_zip("hang.zip", image_zip(2, captioned=(0, 1)))
    res = run_handler({"model_type": "z_image_turbo", "timeout_s": 4, "training": {"gradient_accumulation_steps": 1},
                       "dataset": {"type": "precaptioned", "images_url": url}}, job_id="hang")
    assert res["error_code"] == "timeout" and "time limit" in res["error"], res


def test_time_limit_running_out_while_captioning_stops_before_training(trainer_env, dataset_server, gemini):
    gemini.state.processing_polls = 10**9  # Gemini never finishes processing the first clip
    url = dataset_server.put_zip("slow.zip", {"a.mp4": mp4(1), "b.mp4": mp4(2)})
    res = run_handler({"model_type": "wan13", "timeout_s": 4, "api_keys": {"gemini_api_key": GEMINI_KEY},
                       "dataset": {"type": "videos", "videos_url": url}}, job_id="slow-captions")
    assert res["error_code"] == "timeout", res
    assert "time limit of 4 s ran out during 'captioning', before training started" in res["error"]
    assert res["refresh_worker"] is True
    assert not (trainer_env / "jobs" / "slow-captions" / "logs" / "train.log").exists()
    # the captioning thread stops at its next poll: the upload is deleted and the second clip never sent
    deadline = time.monotonic() + 10
    while len(gemini.state.deleted) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert len(gemini.state.deleted) == 1 and gemini.state.files == {}
    assert len(gemini.state.uploads) == 1 and gemini.state.generate_calls == []


def test_time_limit_running_out_while_downloading_stops_the_download(trainer_env):
    from tests.fakes.http_files import FileServer, Route

    with FileServer() as files:
        # the dataset host answers 503 and asks for 2 s before each retry
        files.add("/slow.zip", Route(b"never sent", statuses=[503] * 20, retry_after="2"))
        res = run_handler({"model_type": "sdxl", "timeout_s": 1,
                           "dataset": {"type": "precaptioned", "images_url": files.url("/slow.zip")}},
                          job_id="slow-download")
        assert res["error_code"] == "timeout", res
        assert "ran out during 'downloading', before training started" in res["error"]
        asked = len(files.seen("/slow.zip"))
        time.sleep(2.5)  # past the retry the download was waiting for when the job ended
        assert asked <= 1 and len(files.seen("/slow.zip")) == asked  # it stopped instead of retrying on


def test_upload_after_training_is_not_cut_off_by_the_time_limit(trainer_env, dataset_server, put_server):
    seed_weights(trainer_env, "sdxl")
    put_server.delay_s = 6.0  # training ends inside the limit, the upload's answer arrives after it
    url = dataset_server.put_zip("quick.zip", image_zip(2, captioned=(0, 1)))
    res = run_handler({"model_type": "sdxl", "timeout_s": 6, "training": {"epochs": 1, "gradient_accumulation_steps": 1},
                       "dataset": {"type": "precaptioned", "images_url": url},
                       "output": {"upload_url": put_server.url("late.zip")}}, job_id="late-upload")
    assert res.get("status") == "success", res
    assert res["timings"]["total"] > 6 and "/bucket/late.zip" in put_server.received


def test_training_delivers_the_latest_epoch_lora_zipped(trainer_env, dataset_server, put_server):
    import io
    import zipfile

    seed_weights(trainer_env, "qwen")
    url = dataset_server.put_zip("train.zip", image_zip(4, captioned=(0, 1, 2, 3)))
    res = run_handler({"model_type": "qwen", "dataset": {"type": "precaptioned", "images_url": url,
                                                          "trigger_word": "ohwx"},
                       "training": {"epochs": 3, "save_every_n_epochs": 2, "gradient_accumulation_steps": 1},
                       "output": {"upload_url": put_server.url("lora.zip")}}, job_id="train-1")
    assert res.get("status") == "success", res
    assert res["model_name"] == "Qwen Image" and res["epochs_completed"] == 3 and res["latest_epoch"] == "epoch3"
    assert res["saved_epochs"] == ["epoch2", "epoch3"] and res["steps"] == 12
    assert res["lora_file"] == "adapter_model.safetensors" and res["lora_format"] == "ComfyUI"
    out = res["output"]
    assert out["download_method"] == "presigned_put"
    assert out["network_volume_path"].startswith(str(trainer_env / "training_outputs" / "train-1"))
    assert out["network_volume_path"].endswith("epoch3")
    body = put_server.received["/bucket/lora.zip"]
    names = zipfile.ZipFile(io.BytesIO(body)).namelist()
    assert any(n.endswith("adapter_model.safetensors") for n in names)
    assert not any("global_step" in n for n in names)
    assert "X-Amz-Signature=deadbeef" not in json.dumps(res)  # the presigned query is a secret
    assert set(res["timings"]) >= {"download", "caption", "config", "models", "training", "upload"}
    assert (trainer_env / "jobs" / "train-1" / "dataset" / "images" / "img_0.txt").read_text().startswith("ohwx, ")


def test_resume_continues_the_last_checkpoint(trainer_env, dataset_server, put_server, monkeypatch):
    seed_weights(trainer_env, "sdxl")
    url = dataset_server.put_zip("resume.zip", image_zip(4, captioned=(0, 1, 2, 3)))
    monkeypatch.setenv("FAKE_DIFFUSION_PIPE_MODE", "crash")  # crashes in epoch 2, after epoch 1's checkpoint
    first = run_handler({"model_type": "sdxl", "dataset": {"type": "precaptioned", "images_url": url},
                         "training": {"epochs": 3, "gradient_accumulation_steps": 1, "checkpoint_every_n_epochs": 1,
                                      "save_every_n_epochs": 1}}, job_id="first")
    assert first["error_code"] == "engine_failed"
    run_dir = next((trainer_env / "training_outputs" / "first").iterdir())
    (run_dir / "epoch3" / "tmp").mkdir(parents=True)  # a kill while saving epoch 3 would leave this behind
    monkeypatch.setenv("FAKE_DIFFUSION_PIPE_MODE", "success")
    before = len(dataset_server.requests)
    res = run_handler({"model_type": "sdxl", "resume": "first",
                       "training": {"epochs": 3, "gradient_accumulation_steps": 1, "checkpoint_every_n_epochs": 1,
                                    "save_every_n_epochs": 1},
                       "output": {"upload_url": put_server.url("resumed.zip")}}, job_id="second")
    assert res.get("status") == "success", res
    assert len(dataset_server.requests) == before  # the earlier job's dataset is reused
    assert res["latest_epoch"] == "epoch3" and res["saved_epochs"] == ["epoch2", "epoch3"]
    assert res["dataset"]["resumed_from"] == "first"
    assert any("removed half-written saves" in w and "epoch3" in w for w in res["warnings"])
    log = (trainer_env / "jobs" / "second" / "logs" / "train.log").read_text()
    assert "Resuming training from checkpoint. Resuming at epoch: 2, step: 5" in log
    assert "training_outputs/first/" in res["output"]["network_volume_path"]
    # a resume of something that does not exist, or of another model type, is refused clearly
    bad = run_handler({"model_type": "sdxl", "resume": "nope"}, job_id="third")
    assert bad["error_code"] == "invalid_input" and "no job 'nope'" in bad["error"]
    bad = run_handler({"model_type": "qwen", "resume": "first"}, job_id="fourth")
    assert bad["error_code"] == "invalid_input" and "trained sdxl" in bad["error"]


def test_full_job_through_the_runpod_sdk_local_mode(trainer_env, dataset_server, put_server):
    """`python -m handlers.diffusion_pipe_trainer --test_input ...`: the SDK's own local runner, end to end:
    download, JoyCaption on the tiny model (real transformers code path), the engine stand-in, upload."""
    import ast
    import os
    import subprocess
    import sys

    seed_weights(trainer_env, "sdxl")
    url = dataset_server.put_zip("local.zip", image_zip(4, captioned=(1,)))
    job = {"input": {"model_type": "sdxl", "dataset": {"type": "images", "images_url": url, "trigger_word": "ohwx"},
                     "training": {"epochs": 2, "save_every_n_epochs": 1, "gradient_accumulation_steps": 2},
                     "caption": {"max_new_tokens": 6},
                     "output": {"upload_url": put_server.url("local.zip")}}}
    proc = subprocess.run([sys.executable, "-m", "handlers.diffusion_pipe_trainer", "--test_input", json.dumps(job)],
                          cwd=Path(__file__).parents[1], env=os.environ.copy(), capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if "Job result:" in x)
    result = ast.literal_eval(line.split("Job result:", 1)[1].strip())["output"]
    assert result["status"] == "success" and result["job_id"] == "local_test"
    assert result["latest_epoch"] == "epoch2" and result["lora_file"] == "lora.safetensors"
    assert result["dataset"]["captioned_images"] == 3
    assert "/bucket/local.zip" in put_server.received
    captions = sorted((trainer_env / "jobs" / "local_test" / "dataset" / "images").glob("*.txt"))
    assert len(captions) == 4 and all(c.read_text().startswith("ohwx, ") for c in captions)


def test_training_uploads_to_s3_seaweedfs(trainer_env, dataset_server, s3_server):
    import io
    import zipfile

    import requests

    seed_weights(trainer_env, "wan14b_i2v")
    url = dataset_server.put_zip("s3.zip", {"clips/a.mp4": mp4(1), "clips/a.txt": b"ohwx walking",
                                            "clips/b.webm": mp4(2), "clips/b.txt": b"ohwx running"})
    res = run_handler({"model_type": "wan14b_i2v",
                       "dataset": {"type": "precaptioned", "videos_url": url, "video_repeats": 2},
                       "training": {"epochs": 2, "save_every_n_epochs": 1, "gradient_accumulation_steps": 1},
                       "output": {"method": "s3", "s3": s3_server.spec(key_prefix="loras")}}, job_id="s3-job")
    assert res.get("status") == "success", res
    out = res["output"]
    assert out["download_method"] == "s3" and "archive_size_mb" in out and out["size_bytes"] > 0
    assert out["expires_in_days"] == 7 and out["network_volume_path"].endswith("epoch2")
    cfg = tomllib.loads((trainer_env / "jobs" / "s3-job" / "config" / "config.toml").read_text())
    assert cfg["video_clip_mode"] == "single_beginning"
    body = requests.get(out["download_url"], timeout=30).content  # the presigned GET works
    names = zipfile.ZipFile(io.BytesIO(body)).namelist()
    assert any(n.endswith("epoch2/adapter_model.safetensors") or n.endswith("adapter_model.safetensors")
               for n in names), names
    assert not any("global_step" in n for n in names)
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_server.bucket)["Contents"]]
    assert any(k.startswith("loras/") for k in keys), keys
    assert s3_server.secret_key not in json.dumps(res)


def test_training_uploads_raw_safetensors_to_the_hub_with_updates(trainer_env, dataset_server, hub_server):
    seed_weights(trainer_env, "flux")
    url = dataset_server.put_zip("hub.zip", image_zip(4, captioned=(0, 1, 2, 3)))
    res = run_handler({"model_type": "flux", "api_keys": {"huggingface_token": "hf_gatedreadtoken000"},
                       "dataset": {"type": "precaptioned", "images_url": url, "trigger_word": "ohwx"},
                       "training": {"epochs": 2, "save_every_n_epochs": 1, "gradient_accumulation_steps": 2},
                       "output": {"method": "huggingface",
                                  "huggingface": {"token": hub_server.token, "repo_id": "tester/my-lora"}}},
                      job_id="hub-job")
    assert res.get("status") == "success", res
    out = res["output"]
    assert out["download_method"] == "huggingface" and out["expires_in_days"] is None
    assert out["repo_url"].endswith("tester/my-lora")
    assert out["safetensors_url"].split("?")[0].endswith("pytorch_lora_weights.safetensors")
    files = hub_server.state.files("tester/my-lora")
    lora = [p for p in files if p.endswith("pytorch_lora_weights.safetensors")]
    assert len(lora) == 1 and files[lora[0]][8:9] == b"{"  # raw safetensors (header length + JSON), not a zip
    assert not any(p.endswith(".zip") or "global_step" in p for p in files)
    # progress and the final state live on in the repo's UPDATES/ folder
    final = json.loads(files["UPDATES/hub-job.json"])
    assert final["status"] == "success" and final["output"]["download_url"] == out["download_url"]
    assert json.loads(files["UPDATES/latest.json"]) == final
    messages = [c["summary"] for c in hub_server.state.commits if c["repo_id"] == "tester/my-lora"]
    assert "job hub-job: training" in messages and messages[-1] == "job hub-job: success", messages
    assert messages.index("job hub-job: downloading") < messages.index("job hub-job: training")
    assert hub_server.token not in json.dumps(res) and "hf_gatedreadtoken000" not in json.dumps(res)
    assert hub_server.token.encode() not in files["UPDATES/hub-job.json"]


def test_hub_output_with_a_refused_token_fails_before_download(trainer_env, dataset_server, hub_server):
    url = dataset_server.put_zip("hub2.zip", image_zip(2, captioned=(0, 1)))
    before = len(dataset_server.requests)
    res = run_handler({"model_type": "sdxl", "dataset": {"type": "precaptioned", "images_url": url},
                       "output": {"method": "huggingface", "huggingface": {"token": "hf_notavalidtoken999"}}},
                      job_id="hub-bad")
    assert res["error_code"] == "invalid_input" and "output.huggingface.token" in res["error"], res
    assert len(dataset_server.requests) == before


def test_the_images_test_input_runs_as_documented(trainer_env, dataset_server):
    """test_inputs/diffusion-pipe-trainer/test_input.json against the dataset `scripts.demo_trainer --serve` serves."""
    from scripts.demo_trainer import DATASET_NAME, tiny_dataset

    job = json.loads((Path(__file__).parents[1] / "test_inputs" / "diffusion-pipe-trainer" / "test_input.json")
                     .read_text())["input"]
    assert job["dataset"]["images_url"] == f"http://127.0.0.1:8765/{DATASET_NAME}" and job["dry_run"] is True
    job["dataset"]["images_url"] = dataset_server.put(DATASET_NAME, tiny_dataset(captioned=True))
    res = run_handler(job, job_id="test-input")
    assert res.get("status") == "dry_run", res
    assert res["dataset"]["images"] == 4 and res["dataset"]["trigger_added"] == 4
    assert "checkpoint_path" in tomllib.loads(res["configs"]["config.toml"])["model"]


def test_video_lengths_are_checked_against_the_frame_buckets(trainer_env, dataset_server):
    def job(files, job_id, **training):
        url = dataset_server.put_zip(f"{job_id}.zip", files)
        return run_handler({"model_type": "wan13", "dry_run": True, "training": training,
                            "dataset": {"type": "precaptioned", "videos_url": url}}, job_id=job_id)

    mixed = {"long.mp4": mp4(1, frames=40), "long.txt": b"a", "short.mp4": mp4(2, frames=8), "short.txt": b"b"}
    res = job(mixed, "len-mixed")
    assert res["status"] == "dry_run", res
    assert res["warnings"] == ["shorter than 33 frames at 16 fps, the engine will skip: short.mp4 (8 frames)"]
    res = job({"short.mp4": mp4(2, frames=8), "short.txt": b"b"}, "len-short")
    assert res["error_code"] == "invalid_input" and "lower training.frame_buckets" in res["error"], res
    res = job({"short.mp4": mp4(2, frames=8), "short.txt": b"b"}, "len-ok", frame_buckets=[1, 5])
    assert res["status"] == "dry_run" and res["warnings"] == []
    res = job({"broken.mp4": b"\x00\x00\x00\x18ftypmp42 truncated", "broken.txt": b"c"}, "len-broken")
    assert res["error_code"] == "invalid_input" and "cannot be read: broken.mp4" in res["error"], res
    res = job(mixed, "len-one", frame_buckets=[1])
    assert res["error_code"] == "invalid_input" and "training.frame_buckets" in res["error"], res


def test_private_hub_dataset_is_read_with_the_jobs_token(trainer_env, hub_server):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub_server.url, token=hub_server.token)
    api.create_repo("tester/private-ds", private=True, exist_ok=True)
    from tests.trainer_fixtures import make_zip

    api.upload_file(path_or_fileobj=make_zip(image_zip(2, captioned=(0, 1), nested=False)), path_in_repo="ds.zip",
                    repo_id="tester/private-ds")
    job = {"model_type": "sdxl", "dry_run": True, "training": {"gradient_accumulation_steps": 1},
           "dataset": {"type": "precaptioned", "images_url": "hf://tester/private-ds/ds.zip"}}
    res = run_handler(job, job_id="hf-ds-anon")
    assert res["error_code"] == "download_failed", res  # private: no token, no dataset
    res = run_handler({**job, "api_keys": {"huggingface_token": hub_server.token}}, job_id="hf-ds")
    assert res.get("status") == "dry_run", res
    assert res["dataset"]["images"] == 2 and hub_server.token not in json.dumps(res)


# ---------------------------------------------------------------- engine conformance at job level


def test_dry_run_shows_the_exact_command_and_the_images_that_never_train(trainer_env, dataset_server):
    files = {f"wide_{i}.png": png(i, (80, 40)) for i in range(5)} | {"tall.png": png(9, (30, 60))}
    files |= {name.replace(".png", ".txt"): b"ohwx, a photo" for name in list(files)}
    url = dataset_server.put_zip("buckets.zip", files)
    res = run_handler({"model_type": "sdxl", "dry_run": True, "dataset": {"type": "precaptioned", "images_url": url},
                       "training": {"epochs": 2}}, job_id="buckets")
    assert res["status"] == "dry_run", res
    cmd = res["command"]
    config = str(trainer_env / "jobs" / "buckets" / "config" / "config.toml")
    assert cmd[1:3] == [str(Path(__file__).parent / "fakes" / "diffusion_pipe_train.py"), "--include=localhost:0"]
    port = cmd[3].removeprefix("--master_port=")
    assert cmd[4:] == ["train.py", "--deepspeed", "--config", config, f"--master_port={port}"]
    # 5 wide images, global batch 1 x 4 accumulation: 4 train, 1 never; the tall one's bucket is dropped whole
    assert res["estimated_steps_per_epoch"] == 1 and res["estimated_total_steps"] == 2
    assert len(res["warnings"]) == 2 and all("never trained" in w for w in res["warnings"])
    assert any(w.endswith("drops it whole: tall.png") for w in res["warnings"])
    assert any(re.search(r"keeps 4 .* left out: wide_[0-4]\.png$", w) for w in res["warnings"]), res["warnings"]


def test_wan_without_flash_attn_is_refused_before_any_download(trainer_env, dataset_server, monkeypatch):
    """models/wan/attention.py asserts flash-attn 2 on Wan's path: found out now, not after the model download."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in os.environ["PYTHONPATH"].split(os.pathsep)
                                                     if not p.endswith("engine-site")))
    url = dataset_server.put_zip("noflash.zip", image_zip(4, captioned=(0, 1, 2, 3)))
    before = len(dataset_server.requests)
    res = run_handler({"model_type": "wan13", "dataset": {"type": "precaptioned", "images_url": url}},
                      job_id="noflash")
    assert res["error_code"] == "engine_failed" and "flash-attn" in res["error"], res
    assert "No module named 'flash_attn'" in res["error"]
    assert len(dataset_server.requests) == before
    # a dry run still shows the configs, and says what a real job would meet
    res = run_handler({"model_type": "wan13", "dry_run": True, "training": {"gradient_accumulation_steps": 1},
                       "dataset": {"type": "precaptioned", "images_url": url}}, job_id="noflash-dry")
    assert res["status"] == "dry_run" and any("refused: flash-attn" in w for w in res["warnings"]), res
    # SDXL does not need it
    res = run_handler({"model_type": "sdxl", "dry_run": True, "training": {"gradient_accumulation_steps": 1},
                       "dataset": {"type": "precaptioned", "images_url": url}}, job_id="noflash-sdxl")
    assert res["status"] == "dry_run" and res["warnings"] == [], res


def test_multi_gpu_limits_are_checked_before_any_download(trainer_env, dataset_server, monkeypatch, tmp_path):
    from tests.test_trainer_engine import fake_nvidia_smi

    monkeypatch.setenv("PATH", str(fake_nvidia_smi(tmp_path, gpus=4, p2p="OK")) + os.pathsep + os.environ["PATH"])
    monkeypatch.delenv("TRAINER_NUM_GPUS")
    url = dataset_server.put_zip("multi.zip", image_zip(8, captioned=tuple(range(8))))
    before = len(dataset_server.requests)
    job = {"model_type": "wan14b_t2v", "dataset": {"type": "precaptioned", "images_url": url}}
    monkeypatch.setenv("TRAINER_HOST_RAM_GB", "128")  # 14B on 4 GPUs: 4 x ~72 GB of host RAM
    res = run_handler(job, job_id="ram")
    assert res["error_code"] == "invalid_input" and "288 GB for 4 GPU(s)" in res["error"], res
    res = run_handler({**job, "training": {"pipeline_stages": 3}}, job_id="stages")
    assert res["error_code"] == "invalid_input" and "pipeline_stages: 3 does not divide the 4 GPU(s)" in res["error"]
    assert len(dataset_server.requests) == before
    # data parallel over all 4 by default: global batch 1 x 1 x 4, so 8 images make 2 steps an epoch
    res = run_handler({"model_type": "sdxl", "dry_run": True, "training": {"gradient_accumulation_steps": 1},
                       "dataset": {"type": "precaptioned", "images_url": url}}, job_id="dp")
    assert res["gpus"] == [0, 1, 2, 3] and "--include=localhost:0,1,2,3" in res["command"]
    assert res["estimated_steps_per_epoch"] == 2, res


def test_every_job_has_a_time_limit(monkeypatch):
    from handlers.diffusion_pipe_trainer.pipeline import time_limit
    from handlers.diffusion_pipe_trainer.schema import parse_request

    req = parse_request({"model_type": "sdxl", "dataset": {"type": "images", "images_url": "https://e/x.zip"}})
    monkeypatch.delenv("TRAINING_TIMEOUT_S", raising=False)
    assert time_limit(req) == 24 * 3600
    monkeypatch.setenv("TRAINING_TIMEOUT_S", "7200")
    assert time_limit(req) == 7200
    assert time_limit(req.model_copy(update={"timeout_s": 60.0})) == 60
