"""The `gpuworker vast` examples of docs/gpuworker.md run as written against the vast.ai stand-in, with
SwarmUI behind vast's token proxy on the instances' port 7801."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

from tests.fakes.vast_api import DEFAULT_OFFERS, FakeVastAPI
from tests.fakes.vast_portal import OpenButtonProxy
from tests.gpuworker_helpers import ROOT, run_cli, start_swarmui

KEY = "vast-DOCSKEY-0123456789ab"
TOKEN = "obt-DOCS-0123456789abcdef"


def doc_commands() -> list[str]:
    """The `gpuworker vast` lines of the vast.ai section's code block, continuations joined."""
    text = (ROOT / "docs" / "gpuworker.md").read_text()
    section = text[text.index("## vast.ai instances"):]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1).replace("\\\n", " ")
    return [line for line in block.splitlines() if line.startswith("gpuworker vast ")]


@pytest.fixture
def stand_ins(tmp_path, monkeypatch):
    proc, url, _ = start_swarmui(tmp_path / "swarm")
    offers = [dict(DEFAULT_OFFERS[0], id=23456789), dict(DEFAULT_OFFERS[0], id=23456790, machine_id=99)]
    try:
        with OpenButtonProxy(url, token=TOKEN) as proxy, \
                FakeVastAPI(api_key=KEY, offers=offers, port_map={7801: proxy.port}) as vast:
            monkeypatch.setenv("VAST_API_KEY", KEY)
            monkeypatch.setenv("VAST_URL", vast.url)
            monkeypatch.setenv("SWARM_TOKEN", TOKEN)
            monkeypatch.setenv("GPUWORKER_STATE_DIR", str(tmp_path / "state"))
            monkeypatch.chdir(tmp_path)
            yield vast, proxy
            for instance_id in list(vast.instances):  # the detached guard then finds nothing left to guard
                vast.destroy(instance_id)
            (tmp_path / "state" / "vast-instances.json").unlink(missing_ok=True)
    finally:
        proc.terminate()
        proc.wait(10)


def test_docs_vast_examples_run_as_written(capsys, stand_ins):
    vast, proxy = stand_ins
    commands = doc_commands()
    assert len(commands) >= 10 and any("--template" in c for c in commands)
    outputs = []
    for line in commands:
        argv = shlex.split(os.path.expandvars(line), comments=True)[1:]
        r = run_cli(capsys, *argv)
        assert r.code == 0, f"{line}\n{r.err}"
        assert KEY not in r.text and TOKEN not in r.text
        outputs.append(r)
    offers = outputs[0].out
    assert "23456789" in offers and "25 GB" in offers
    assert "template SwarmUI: image vastai/swarmui:latest, launch mode jupyter, disk 100 GB" in outputs[1].err
    assert outputs[2].out.strip() == f"http://127.0.0.1:{proxy.port}"  # wait: through the token proxy
    assert vast.destroyed == [29829389, 29829390] and not vast.instances
    assert vast.bodies and Path("state").exists()
