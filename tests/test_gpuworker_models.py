"""`gpuworker models ...`: a manifest's files (https, hf repo files, gs://, s3://) into a volume folder,
in parallel, resumed, checksummed; manifest errors named before any download."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.http_files import FileServer, Route
from tests.gpuworker_helpers import run_cli

KB = 1024
GCS_TOKEN = "ya29.GCSTOKEN-abcdef0123456789"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def files(monkeypatch):
    with FileServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url("").rstrip("/"))
        monkeypatch.setenv("GCS_PUBLIC_URL", server.url("/gcs").rstrip("/"))
        monkeypatch.setenv("GCS_OAUTH_TOKEN", GCS_TOKEN)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield server


def write(tmp_path: Path, manifest) -> Path:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    return path


def test_fetch_all_sources_then_rerun_is_a_no_op(files, tmp_path, capsys):
    blobs = {name: os.urandom(size) for name, size in
             (("high", 300 * KB), ("lora", 120 * KB), ("vae", 64 * KB), ("depth", 90 * KB))}
    files.add("/r2/wan22_high.gguf", Route(blobs["high"], drop_after=100 * KB))  # resumed with Range
    files.add("/Kijai/WanVideo_comfy/resolve/main/Lightx2v/lora_rank64.safetensors", Route(blobs["lora"]))
    files.add("/stabilityai/sdxl-vae/resolve/v1/sdxl_vae.safetensors", Route(blobs["vae"]))
    files.add("/gcs/my-bucket/controlnet/depth.safetensors", Route(blobs["depth"]))
    manifest = write(tmp_path, {"files": [
        {"url": files.url("/r2/wan22_high.gguf"), "path": "SwarmUI/Models/diffusion_models/wan22_high.gguf",
         "sha256": sha(blobs["high"]), "size": len(blobs["high"])},
        {"repo": "Kijai/WanVideo_comfy", "file": "Lightx2v/lora_rank64.safetensors", "revision": "main",
         "folder": "SwarmUI/Models/Lora", "sha256": sha(blobs["lora"])},
        {"source": "hf://stabilityai/sdxl-vae/sdxl_vae.safetensors@v1", "folder": "SwarmUI/Models/VAE",
         "note": "ignored"},
        {"url": "gs://my-bucket/controlnet/depth.safetensors", "path": "controlnet/depth.safetensors",
         "size": len(blobs["depth"])},
    ]})
    dest = tmp_path / "volume"
    r = run_cli(capsys, "models", "fetch", str(manifest), "--dest", str(dest), "--jobs", "3", "--json")
    assert r.code == 0, r.err
    assert (r.json["fetched"], r.json["present"], r.json["failed"]) == (4, 0, 0)
    assert (dest / "SwarmUI/Models/diffusion_models/wan22_high.gguf").read_bytes() == blobs["high"]
    assert (dest / "SwarmUI/Models/Lora/lora_rank64.safetensors").read_bytes() == blobs["lora"]
    assert (dest / "SwarmUI/Models/VAE/sdxl_vae.safetensors").read_bytes() == blobs["vae"]
    assert (dest / "controlnet/depth.safetensors").read_bytes() == blobs["depth"]
    high = files.seen("/r2/wan22_high.gguf")
    assert len(high) == 2 and high[1].headers["range"] == f"bytes={100 * KB}-"
    assert files.seen("/gcs/my-bucket/controlnet/depth.safetensors")[0].headers["authorization"] == f"Bearer {GCS_TOKEN}"
    assert GCS_TOKEN not in r.text
    assert not list(dest.rglob("*.partial*"))

    again = run_cli(capsys, "models", "fetch", str(manifest), "--dest", str(dest))
    assert again.code == 0 and "0 fetched, 4 already present, 0 failed" in again.out
    assert len(files.seen("/r2/wan22_high.gguf")) == 2  # nothing downloaded again

    # A corrupted file (right size, wrong bytes) is noticed by its checksum and fetched again ...
    lora = dest / "SwarmUI/Models/Lora/lora_rank64.safetensors"
    lora.write_bytes(bytes(len(blobs["lora"])))
    kept = run_cli(capsys, "models", "fetch", str(manifest), "--dest", str(dest), "--trust-existing", "--json")
    assert kept.json["present"] == 4  # ... unless the operator says not to re-hash
    fixed = run_cli(capsys, "models", "fetch", str(manifest), "--dest", str(dest), "--only", "Lora", "--json")
    assert fixed.code == 0 and fixed.json["files"][0]["replaced"] == "sha256 differs"
    assert lora.read_bytes() == blobs["lora"]


def test_failures_are_reported_and_the_rest_is_fetched(files, tmp_path, capsys):
    good, bad = os.urandom(50 * KB), os.urandom(40 * KB)
    files.add("/good.bin", Route(good))
    files.add("/bad.bin", Route(bad))
    files.add("/missing.bin", Route(statuses=[404]))
    manifest = write(tmp_path, [
        {"url": files.url("/good.bin"), "path": "a/good.bin", "sha256": sha(good)},
        {"url": files.url("/bad.bin"), "path": "a/bad.bin", "sha256": sha(good)},
        {"url": files.url("/missing.bin"), "path": "a/missing.bin"},
    ])
    dest = tmp_path / "vol"
    r = run_cli(capsys, "models", "fetch", str(manifest), "--dest", str(dest))
    assert r.code == 1
    assert "sha256 mismatch" in r.out and "HTTP 404" in r.out
    assert "1 fetched, 0 already present, 2 failed" in r.out
    assert (dest / "a/good.bin").read_bytes() == good
    assert not (dest / "a/bad.bin").exists()


def test_swarm_worker_manifest_is_accepted(files, tmp_path, capsys):
    data = os.urandom(10 * KB)
    files.add("/models/wan22_low.gguf", Route(data))
    manifest = write(tmp_path, {"models": [{"url": files.url("/models/wan22_low.gguf"), "folder": "diffusion_models/Wan",
                                            "sha256": sha(data), "filename": "low.gguf"}]})
    r = run_cli(capsys, "models", "fetch", str(manifest), "--dest", str(tmp_path / "Models"))
    assert r.code == 0, r.err
    assert (tmp_path / "Models/diffusion_models/Wan/low.gguf").read_bytes() == data


def test_manifest_errors_name_entry_and_field_before_any_download(files, tmp_path, capsys):
    manifest = write(tmp_path, {"files": [
        {"url": files.url("/x.bin"), "path": "../escape.bin"},
        {"path": "no-source.bin"},
        {"url": "ftp://host/file.bin", "path": "f.bin"},
        {"url": files.url("/y.bin"), "path": "y.bin", "sha256": "abc"},
        {"url": files.url("/z.bin"), "path": "same.bin"},
        {"repo": "acme/models", "file": "w.bin", "path": "same.bin"},
        {"repo": "acme/models", "url": files.url("/w.bin"), "file": "w.bin"},
        {"url": files.url("/v.bin"), "path": "v.bin", "sha265": "a" * 64},
    ]})
    r = run_cli(capsys, "models", "fetch", str(manifest), "--dest", str(tmp_path / "vol"))
    assert r.code == 2
    for expected in ("files[0].path: must be a relative path", "files[1]: give exactly one source",
                     "files[2]: url: unsupported scheme 'ftp'", "files[3].sha256:",
                     "files[5].path: same.bin is also the target of files[4]", "files[6]: give exactly one source",
                     "files[7].sha265: Extra inputs are not permitted"):
        assert expected in r.err, expected
    assert not files.seen("/x.bin") and not (tmp_path / "vol").exists()
    r = run_cli(capsys, "models", "fetch", str(tmp_path / "nope.json"), "--dest", str(tmp_path / "vol"))
    assert r.code == 2 and "is not a file" in r.err


def test_s3_source(request, tmp_path, capsys, monkeypatch):
    try:
        s3 = request.getfixturevalue("s3_server")
    except pytest.FixtureLookupError:
        pytest.skip("the s3_server fixture (real SeaweedFS) is not registered yet")
    import boto3

    data = os.urandom(70 * KB)
    client = boto3.client("s3", endpoint_url=s3.endpoint_url, aws_access_key_id=s3.access_key,
                          aws_secret_access_key=s3.secret_key, region_name="us-east-1")
    client.put_object(Bucket=s3.bucket, Key="loras/era_1920s.safetensors", Body=data)
    monkeypatch.setenv("S3_ENDPOINT_URL", s3.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)
    manifest = write(tmp_path, [{"url": f"s3://{s3.bucket}/loras/era_1920s.safetensors", "folder": "loras",
                                 "sha256": sha(data)}])
    r = run_cli(capsys, "models", "fetch", str(manifest), "--dest", str(tmp_path / "vol"))
    assert r.code == 0, r.out + r.err
    assert (tmp_path / "vol/loras/era_1920s.safetensors").read_bytes() == data
    assert s3.secret_key not in r.text


def test_trainer_models_use_the_trainers_markers(tmp_path, capsys):
    from handlers.diffusion_pipe_trainer.models import REGISTRY

    models = tmp_path / "models"
    for item in REGISTRY["sdxl"].fetch:
        (models / item.local_dir).mkdir(parents=True)
        (models / item.local_dir / ".complete").write_text(item.repo_id)
    r = run_cli(capsys, "models", "trainer", "sdxl", "--models-dir", str(models), "--json")
    assert r.code == 0, r.err
    assert [i["status"] for i in r.json["items"]] == ["present"] * len(REGISTRY["sdxl"].fetch)
    r = run_cli(capsys, "models", "trainer", "sdxl", "sd15")
    assert r.code == 2 and "model_type: sd15 unknown" in r.err


def test_console_script_models_fetch(files, tmp_path):
    data = os.urandom(20 * KB)
    files.add("/m.bin", Route(data))
    manifest = write(tmp_path, [{"url": files.url("/m.bin"), "path": "m.bin", "sha256": sha(data)}])
    exe = Path(sys.executable).parent / "gpuworker"
    proc = subprocess.run([str(exe), "models", "fetch", str(manifest), "--dest", str(tmp_path / "v"), "--json"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["fetched"] == 1 and (tmp_path / "v/m.bin").read_bytes() == data


def test_controlnet_manifest_variant(files, tmp_path, capsys):
    """controlnet-pyworker's own manifest, as shipped, limited to the lightning variant."""
    from urllib.parse import urlsplit

    from common.model_files import request_for
    from handlers.controlnet_pyworker.manifest import PACKAGED, load
    from scripts.gpuworker.manifest import load_manifest

    wanted = load_manifest(PACKAGED, variant="lightning")
    for item in wanted:
        url, _ = request_for(item.source)
        if url.startswith("hf://"):
            owner, name, rest = url[len("hf://"):].split("/", 2)
            files.add(f"/{owner}/{name}/resolve/main/{rest}", Route(item.path.encode()))
        else:
            files.add(urlsplit(url).path, Route(item.path.encode()))
    dest = tmp_path / "models"
    r = run_cli(capsys, "models", "fetch", str(PACKAGED), "--dest", str(dest), "--variant", "lightning", "--json")
    assert r.code == 0, r.out + r.err
    assert r.json["fetched"] == len(wanted)
    manifest = load(PACKAGED)
    needed = {p for c in manifest.components_for("lightning", eras=True, depth=True) for _, p in c.file_paths(dest)}
    assert {p for p in dest.rglob("*") if p.is_file()} == needed
    assert (dest / "loras/experimance_wilderness.safetensors").read_bytes() == b"loras/experimance_wilderness.safetensors"
    assert not (dest / "loras/Hyper-SDXL-8steps-CFG-lora.safetensors").exists()  # another variant's LoRA
    r = run_cli(capsys, "models", "fetch", str(PACKAGED), "--dest", str(dest), "--variant", "turbo")
    assert r.code == 2 and "--variant: 'turbo' unknown" in r.err


def test_transfer_bars_on_a_terminal(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")
    data = os.urandom(200 * KB)
    files.add("/big.bin", Route(data))
    manifest = write(tmp_path, [{"url": files.url("/big.bin"), "path": "big.bin", "sha256": sha(data)}])
    r = run_cli(capsys, "models", "fetch", str(manifest), "--dest", str(tmp_path / "v"))
    assert r.code == 0
    assert "big.bin" in r.err and "100.0%" in r.err and "204.8/204.8 kB" in r.err  # rich counts decimal kB
    again = run_cli(capsys, "models", "fetch", str(manifest), "--dest", str(tmp_path / "v"))
    assert again.code == 0 and "1 already present" in again.out
