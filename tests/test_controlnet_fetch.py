"""scripts/fetch_models.py: a variant's files from their manifest sources into MODELS_DIR."""

from __future__ import annotations

import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from scripts import fetch_models


@pytest.fixture()
def served_tiny(cn_models, tmp_path):
    """The tiny models served over HTTP, and a manifest whose sources point there."""
    hits: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(cn_models), **k)

        def log_message(self, *a):
            pass

        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    data = json.loads((cn_models / "manifest.json").read_text())
    for comp in data["components"].values():
        for f in comp["files"]:
            f["source"] = f"{base}/{comp['path']}" + (f"/{f['name']}" if f["name"] else "")
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(data))
    yield manifest, hits, data
    httpd.shutdown()


def test_fetches_a_variant_then_skips_what_is_there(served_tiny, tmp_path, capsys):
    manifest, hits, data = served_tiny
    models = tmp_path / "models"
    args = ["--manifest", str(manifest), "--models-dir", str(models), "--variant", "hyper", "--no-eras"]
    assert fetch_models.main(args) == 0
    expected = {c["path"] + ("/" + f["name"] if f["name"] else "")
                for k in ("sdxl-base", "controlnet-depth", "vae-fp16-fix", "lora-hyper-8step-cfg")
                for c in [data["components"][k]] for f in c["files"]}
    got = {p.relative_to(models).as_posix() for p in models.rglob("*") if p.is_file() and p.name != ".fetch.lock"}
    assert got == expected, "exactly the hyper variant's files, no era LoRAs, no lightning LoRA"
    first = len(hits)
    assert fetch_models.main(args) == 0
    assert len(hits) == first, "files already present are not downloaded again"
    assert "0 missing" in capsys.readouterr().out


def test_verify_refetches_a_corrupted_file(served_tiny, tmp_path):
    manifest, hits, data = served_tiny
    models = tmp_path / "models"
    args = ["--manifest", str(manifest), "--models-dir", str(models), "--variant", "lightning"]
    assert fetch_models.main(args) == 0
    lora = models / data["components"]["lora-era-drone"]["path"]
    good = lora.read_bytes()
    lora.write_bytes(b"garbage")
    assert fetch_models.main(args) == 0 and lora.read_bytes() == b"garbage", "without --verify, present is enough"
    assert fetch_models.main([*args, "--verify"]) == 0
    assert lora.read_bytes() == good


def test_checksum_mismatch_fails(served_tiny, tmp_path, capsys):
    manifest, _, data = served_tiny
    data["components"]["vae-fp16-fix"]["files"][0]["sha256"] = "1" * 64
    manifest.write_text(json.dumps(data))
    rc = fetch_models.main(["--manifest", str(manifest), "--models-dir", str(tmp_path / "m"), "--no-eras"])
    assert rc == 1 and "sha256 mismatch" in capsys.readouterr().err
