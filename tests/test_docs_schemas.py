"""The generated request/response reference (`python -m scripts.gen_docs`): every page and JSON
schema is up to date with the pydantic models, and every field carries a description."""

from __future__ import annotations

import json
import shutil

import pytest

from scripts import gen_docs


def test_pages_and_schemas_are_fresh():
    assert gen_docs.stale() == [], "run `python -m scripts.gen_docs` and commit the result"


@pytest.mark.parametrize("path", sorted(p.name for p in gen_docs.outputs() if p.suffix == ".json"))
def test_every_field_has_a_description(path):
    schema = json.loads((gen_docs.SCHEMAS / path).read_text())
    assert gen_docs.undescribed(schema) == [], "give these fields Field(..., description=...)"


@pytest.fixture
def docs_copy(tmp_path, monkeypatch):
    """gen_docs working on a copy of docs/ (fresh to begin with)."""
    docs = tmp_path / "docs"
    shutil.copytree(gen_docs.DOCS, docs)
    monkeypatch.setattr(gen_docs, "ROOT", tmp_path)
    monkeypatch.setattr(gen_docs, "DOCS", docs)
    monkeypatch.setattr(gen_docs, "SCHEMAS", docs / "schemas")
    assert gen_docs.stale() == []
    return docs


def test_a_changed_model_makes_its_page_and_schema_stale(docs_copy, monkeypatch):
    docs = docs_copy

    from handlers.controlnet_pyworker.schema import GenerateRequest

    field = GenerateRequest.model_fields["mock_depth"]
    monkeypatch.setattr(field, "description", "a CHANGED description")
    GenerateRequest.model_rebuild(force=True)
    try:
        assert gen_docs.stale() == ["docs/schemas/controlnet-pyworker.request.json", "docs/controlnet-pyworker.md"]
        assert gen_docs.main([]) == 0 and gen_docs.stale() == []
        assert "a CHANGED description" in (docs / "controlnet-pyworker.md").read_text()
    finally:
        monkeypatch.undo()
        GenerateRequest.model_rebuild(force=True)


def test_undescribed_names_every_bare_field():
    schema = {"properties": {"a": {"type": "string", "description": "x"}, "b": {"type": "integer"}},
              "$defs": {"Inner": {"properties": {"c": {"type": "string"}}}}}
    assert gen_docs.undescribed(schema) == ["Inner.c", "b"]


def test_a_changed_setting_makes_the_environment_table_stale(docs_copy, monkeypatch):
    from dataclasses import fields

    from handlers.controlnet_pyworker.settings import Settings

    docs = docs_copy
    field = next(f for f in fields(Settings) if f.name == "max_queue")
    monkeypatch.setattr(field, "metadata", {**field.metadata, "doc": "a CHANGED meaning"})
    assert gen_docs.stale() == ["docs/controlnet-pyworker.md"]
    assert gen_docs.main([]) == 0 and gen_docs.stale() == []
    assert "| `MAX_QUEUE` | `8` | model server and RunPod handler | a CHANGED meaning |" in \
        (docs / "controlnet-pyworker.md").read_text()


def test_a_changed_trainer_setting_makes_its_environment_table_stale(docs_copy, monkeypatch):
    from handlers.diffusion_pipe_trainer.settings import TrainerSettings

    monkeypatch.setattr(TrainerSettings.model_fields["kill_grace_s"], "description", "a CHANGED grace")
    assert gen_docs.stale() == ["docs/diffusion-pipe-trainer.md"]
    assert gen_docs.main([]) == 0 and gen_docs.stale() == []
    assert "| `TRAINER_KILL_GRACE_S` | `10` | a CHANGED grace |" in (docs_copy / "diffusion-pipe-trainer.md").read_text()


def test_every_trainer_setting_is_documented():
    from handlers.diffusion_pipe_trainer.settings import TrainerSettings

    table = gen_docs.settings_table(TrainerSettings)
    for field in TrainerSettings.model_fields.values():
        assert field.description and f"`{field.json_schema_extra['env'][0]}`" in table


def test_a_changed_swarm_setting_makes_its_environment_table_stale(docs_copy, monkeypatch):
    from dataclasses import fields

    from handlers.swarm_worker.config import WorkerConfig

    field = next(f for f in fields(WorkerConfig) if f.name == "idle_poll_seconds")
    monkeypatch.setattr(field, "metadata", {**field.metadata, "doc": "a CHANGED poll"})
    assert gen_docs.stale() == ["docs/swarm-worker.md"]
    assert gen_docs.main([]) == 0 and gen_docs.stale() == []
    assert "| `SWARM_IDLE_POLL_SECONDS` | `5` | a CHANGED poll |" in (docs_copy / "swarm-worker.md").read_text()
