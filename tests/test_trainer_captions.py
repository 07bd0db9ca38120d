"""Captioning (tiny JoyCaption through transformers, Gemini stand-in) and dataset flattening."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from common.jobs import JobError
from handlers.diffusion_pipe_trainer import captions, dataset
from handlers.diffusion_pipe_trainer.models import JOYCAPTION_DIR
from tests.fakes.gemini import caption_for
from tests.trainer_fixtures import GEMINI_KEY, mp4, png


def test_trigger_word_is_prepended_once():
    assert captions.with_trigger("a dog on grass", "ohwx") == "ohwx, a dog on grass"
    assert captions.with_trigger("ohwx, a dog", "ohwx") == "ohwx, a dog"
    assert captions.with_trigger("OHWX dog\n runs", "ohwx") == "OHWX dog runs"
    assert captions.with_trigger("a dog", None) == "a dog"


def test_existing_captions_get_the_trigger_only_where_missing(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.with_suffix(".txt").write_text("a red car")
    b.with_suffix(".txt").write_text("ohwx, a blue car")
    assert captions.add_trigger_to_existing([a, b], "ohwx") == 1
    assert a.with_suffix(".txt").read_text().strip() == "ohwx, a red car"
    assert b.with_suffix(".txt").read_text().strip() == "ohwx, a blue car"


def test_joycaption_captions_images_through_transformers(tmp_path, trainer_models, monkeypatch):
    monkeypatch.setenv("JOYCAPTION_SEED", "0")
    files = []
    for i in range(3):
        p = tmp_path / f"img{i}.png"
        p.write_bytes(png(i, (40 + 8 * i, 30)))
        files.append(p)
    seen = []
    asyncio.run(captions.caption_images(
        trainer_models / JOYCAPTION_DIR, files, prompt="Write a short caption.", trigger="ohwx", max_new_tokens=8,
        on_caption=lambda p, c: seen.append((p, c)), log_file=tmp_path / "jc.log", batch_size=2,
    ))
    assert [p for p, _ in seen] == files  # per-file progress, in order
    for p, c in seen:
        text = p.with_suffix(".txt").read_text().strip()
        assert c and text == f"ohwx, {' '.join(c.split())}"  # generated tokens, trigger once
        assert "<image>" not in text and "<|eot_id|>" not in text


def test_joycaption_failure_is_engine_failed_with_log(tmp_path):
    img = tmp_path / "x.png"
    img.write_bytes(png(1))
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(JobError) as ei:
        asyncio.run(captions.caption_images(broken, [img], prompt="p", trigger=None, max_new_tokens=4,
                                            on_caption=lambda p, c: None, log_file=tmp_path / "jc.log"))
    assert ei.value.code == "engine_failed" and "0/1 captioned" in ei.value.message
    assert ei.value.details  # the child's stderr tail
    assert not img.with_suffix(".txt").exists()


def _videos(tmp_path: Path, n: int, fail: int | None = None) -> list[Path]:
    out = []
    for i in range(n):
        p = tmp_path / f"clip{i}.mp4"
        p.write_bytes(mp4(i, 20 + 10 * i) + (b"GEMINI_FAIL" if i == fail else b""))
        out.append(p)
    return out


def test_gemini_uploads_whole_clips_retries_429_and_writes_captions(tmp_path, gemini):
    import hashlib

    videos = _videos(tmp_path, 2)
    gemini.state.rate_limit_next = 2
    seen = []
    captions.caption_videos(videos, api_key=GEMINI_KEY, model=None, prompt=None, trigger="ohwx",
                            on_caption=lambda p, c: seen.append(p))
    assert seen == videos
    assert gemini.state.rate_limited == 2
    assert [u["size"] for u in gemini.state.uploads] == [v.stat().st_size for v in videos]  # the whole clip
    assert all(u["mime_type"] == "video/mp4" for u in gemini.state.uploads)
    assert len(gemini.state.deleted) == 2  # uploads are cleaned up
    call = gemini.state.generate_calls[-1]
    assert call["model"] == captions.DEFAULT_GEMINI_MODEL and call["file_uris"]
    assert "ohwx" in next(p["text"] for p in call["parts"] if "text" in p)
    for v in videos:
        digest = hashlib.sha256(v.read_bytes()).hexdigest()
        assert v.with_suffix(".txt").read_text().strip() == f"ohwx, {caption_for(digest)}"


def test_gemini_failed_processing_is_engine_failed_and_writes_no_caption(tmp_path, gemini):
    videos = _videos(tmp_path, 2, fail=1)
    with pytest.raises(JobError) as ei:
        captions.caption_videos(videos, api_key=GEMINI_KEY, model=None, prompt=None, trigger=None,
                                on_caption=lambda p, c: None)
    assert ei.value.code == "engine_failed" and "clip1.mp4" in ei.value.message
    assert videos[0].with_suffix(".txt").exists() and not videos[1].with_suffix(".txt").exists()


def test_gemini_retired_model_and_bad_key_are_named(tmp_path, gemini, monkeypatch):
    videos = _videos(tmp_path, 1)
    monkeypatch.setenv("GEMINI_MODEL", "gemini-2.5-flash")
    with pytest.raises(JobError) as ei:
        captions.caption_videos(videos, api_key=GEMINI_KEY, model=None, prompt=None, trigger=None,
                                on_caption=lambda p, c: None)
    assert ei.value.code == "invalid_input" and "caption.gemini_model" in ei.value.message
    assert "gemini-2.5-flash" in ei.value.message
    with pytest.raises(JobError) as ei:
        captions.caption_videos(videos, api_key="wrong-key-123", model="gemini-3.5-flash", prompt=None, trigger=None,
                                on_caption=lambda p, c: None)
    assert ei.value.code == "invalid_input" and "api_keys.gemini_api_key" in ei.value.message
    assert "wrong-key-123" not in ei.value.message


def test_flatten_nested_dataset_keeps_names_unique_and_pairs_captions(tmp_path):
    src = tmp_path / "x"
    files = {
        "set/a/cat.png": b"1", "set/a/cat.txt": b"a cat", "set/b/cat.png": b"2", "set/b/cat.txt": b"another cat",
        "set/dog.JPG": b"3", "__MACOSX/set/._dog.JPG": b"junk", "set/.DS_Store": b"junk", "set/notes.md": b"x",
        "set/c/a_cat.png": b"4",
    }
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    media = dataset.flatten(src, "images", tmp_path / "flat")
    names = sorted(p.name for p in (tmp_path / "flat").iterdir())
    assert names == ["a_cat.png", "cat.png", "cat.txt", "dog.jpg", "set_b_cat.png", "set_b_cat.txt"]
    assert (tmp_path / "flat" / "cat.txt").read_text() == "a cat"
    assert (tmp_path / "flat" / "cat.png").read_bytes() == b"1"
    assert (tmp_path / "flat" / "set_b_cat.txt").read_text() == "another cat"
    assert sorted(p.name for p in media.uncaptioned) == ["a_cat.png", "dog.jpg"]
    assert media.ignored == ["set/notes.md"] and media.count == 4


def test_flatten_names_what_it_found_when_the_kind_is_wrong(tmp_path):
    src = tmp_path / "x"
    src.mkdir()
    (src / "clip.mp4").write_bytes(b"v")
    with pytest.raises(JobError) as ei:
        dataset.flatten(src, "images", tmp_path / "flat")
    assert ei.value.code == "invalid_input" and "clip.mp4" in ei.value.message and "images_url" in ei.value.message
    (src / "clip.mp4").unlink()
    (src / "readme.pdf").write_bytes(b"%PDF")
    with pytest.raises(JobError) as ei:
        dataset.flatten(src, "images", tmp_path / "flat2")
    assert "no images found" in ei.value.message and ".pdf" in ei.value.message


def test_unreadable_and_animated_images_are_named(tmp_path):
    import io

    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "ok.png").write_bytes(png(1))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="WEBP", save_all=True, append_images=frames[1:])
    media = dataset.MediaSet("images", folder, [folder / "ok.png", folder / "broken.jpg"])
    with pytest.raises(JobError) as ei:
        dataset.check_images_open(media)
    assert "1 image(s) cannot be read: broken.jpg" in ei.value.message
    (folder / "anim.webp").write_bytes(buf.getvalue())
    media = dataset.MediaSet("images", folder, [folder / "ok.png", folder / "anim.webp"])
    with pytest.raises(JobError) as ei:
        dataset.check_images_open(media)
    assert "animated" in ei.value.message and "anim.webp" in ei.value.message
    dataset.check_images_open(dataset.MediaSet("images", folder, [folder / "ok.png"]))
