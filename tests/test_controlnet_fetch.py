"""The image's own fetch (`python -m handlers.controlnet_pyworker.fetch`, run by start.sh and the
bake) and `fetch.ensure` (the engine's lazy fetch): a variant's files from their manifest sources
into MODELS_DIR, through `common.model_files`, the code `gpuworker models fetch` runs too."""

from __future__ import annotations

import json

import pytest

from handlers.controlnet_pyworker import fetch
from handlers.controlnet_pyworker import manifest as manifest_mod
from tests.fakes.http_files import FileServer, Route

GCS_TOKEN = "ya29.CONTROLNET-GCS-0123456789abcdef"


@pytest.fixture()
def served_tiny(cn_models, tmp_path, monkeypatch):
    """The tiny models served over HTTP (the era LoRAs as gs:// objects), and a manifest naming them."""
    data = json.loads((cn_models / "manifest.json").read_text())
    with FileServer() as server:
        for comp in data["components"].values():
            for f in comp["files"]:
                rel = comp["path"] + (f"/{f['name']}" if f["name"] else "")
                server.add(f"/bucket/{rel}", Route((cn_models / rel).read_bytes()))
                f["source"] = (f"gs://bucket/{rel}" if comp["path"].startswith("loras/experimance")
                               else server.url(f"/bucket/{rel}"))
        manifest = tmp_path / "manifest.json"
        manifest.write_text(json.dumps(data))
        monkeypatch.setenv("MODEL_MANIFEST", str(manifest))
        monkeypatch.setenv("MODELS_DIR", str(tmp_path / "models"))
        monkeypatch.setenv("GCS_PUBLIC_URL", server.url("").rstrip("/"))
        monkeypatch.setenv("ALLOW_PRIVATE_DOWNLOADS", "1")
        monkeypatch.delenv("PRELOAD_MODEL", raising=False)
        yield server, data, tmp_path / "models"


def _served(server: FileServer, data: dict, keys) -> int:
    return sum(len(server.seen(f"/bucket/{data['components'][k]['path']}" + (f"/{f['name']}" if f["name"] else "")))
               for k in keys for f in data["components"][k]["files"])


def test_preload_fetches_the_default_variant_then_skips_what_is_there(served_tiny):
    server, data, models = served_tiny
    assert fetch.main(["--preload"]) == 0
    m = manifest_mod.load()
    wanted = {c.key for c in m.components_for("lightning")}
    got = {p.relative_to(models).as_posix() for p in models.rglob("*") if p.is_file() and p.name != ".fetch.lock"}
    assert got == {f.path for k in wanted for f in m.components[k].model_files()}
    assert "lora-hyper-8step-cfg" not in wanted and "depth-anything-v2-small" not in wanted
    first = _served(server, data, wanted)
    assert fetch.main(["--preload"]) == 0 and _served(server, data, wanted) == first, "present files are kept"


def test_variant_and_none(served_tiny, monkeypatch):
    server, data, models = served_tiny
    monkeypatch.setenv("PRELOAD_MODEL", "none")
    assert fetch.main(["--preload"]) == 0 and not models.exists()
    assert fetch.main(["--variant", "hyper"]) == 0
    assert (models / data["components"]["lora-hyper-8step-cfg"]["path"]).is_file()
    assert not (models / data["components"]["lora-lightning-8step"]["path"]).exists()
    assert fetch.main(["--variant", "turbo"]) == 1


def test_gs_sources_carry_the_oauth_token_when_set(served_tiny, monkeypatch):
    """One gs:// rule for the worker and the CLI: GCS's HTTPS endpoint, with the token when given."""
    server, data, models = served_tiny
    monkeypatch.setenv("GCS_OAUTH_TOKEN", GCS_TOKEN)
    assert fetch.main(["--variant", "base"]) == 0
    era = data["components"]["lora-era-wilderness"]["path"]
    seen = server.seen(f"/bucket/{era}")
    assert seen and seen[0].headers["authorization"] == f"Bearer {GCS_TOKEN}"
    vae = data["components"]["vae-fp16-fix"]
    assert "authorization" not in server.seen(f"/bucket/{vae['path']}/{vae['files'][0]['name']}")[0].headers


def test_verify_refetches_a_corrupted_file(served_tiny):
    _, data, models = served_tiny
    m = manifest_mod.load()
    comps = m.components_for("lightning")
    fetch.ensure(comps, models)
    lora = models / data["components"]["lora-era-drone"]["path"]
    good = lora.read_bytes()
    lora.write_bytes(b"x" * len(good))
    assert fetch.ensure(comps, models) == [] and lora.read_bytes() != good, "without verify, present is enough"
    assert fetch.ensure(comps, models, verify_existing=True) == [lora] and lora.read_bytes() == good


def test_checksum_mismatch_fails(served_tiny, tmp_path, caplog):
    _, data, _ = served_tiny
    data["components"]["vae-fp16-fix"]["files"][0]["sha256"] = "1" * 64
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    assert fetch.main(["--preload"]) == 1
    assert "sha256 mismatch" in caplog.text
