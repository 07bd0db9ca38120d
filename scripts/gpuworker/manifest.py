"""`gpuworker models fetch`'s manifests: what files a volume needs, where they come from, what
they must hash to. Two formats, both read into `common.model_files.ModelFile`s:

- the flat one (`common.model_manifest`: `{"files": [{url|repo+file, path|folder, sha256?, size?}]}`,
  a bare list, or the swarm worker's `{"models": [...]}`), and
- controlnet-pyworker's (`handlers/controlnet_pyworker/manifest.json`: `components` with `path`
  and `files[{name, source, sha256, size?}]`), read by that image's own parser: each file lands at
  `<component path>/<name>`; `variant=` limits it to what that variant needs (its base,
  ControlNet, VAE, speed LoRA, the era LoRAs and the depth estimator).

Sources and the `gs://` rule: `common.model_files`.
"""

from __future__ import annotations

import json
from pathlib import Path

from common.model_files import ModelFile
from scripts.gpuworker.console import CliError


def _controlnet_files(data: dict, variant: str | None) -> list[ModelFile]:
    from handlers.controlnet_pyworker.manifest import ManifestError, parse

    try:
        parsed = parse(data)
    except ManifestError as exc:
        raise CliError(f"manifest: {exc}", 2) from None
    if variant is None:
        components = list(parsed.components.values())
    elif variant in parsed.variants:
        components = parsed.components_for(variant, eras=True, depth=True)
    else:
        raise CliError(f"--variant: {variant!r} unknown (known: {', '.join(parsed.variants)})", 2)
    return [f for c in components for f in c.model_files()]


def load_manifest(path: Path, *, variant: str | None = None) -> list[ModelFile]:
    """Parse and check a manifest; every problem names the entry and the field, before any download."""
    from common.model_manifest import ManifestProblems, entries_of, parse_entries

    if not path.is_file():
        raise CliError(f"manifest: {path} is not a file", 2)
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise CliError(f"manifest {path}: not valid JSON ({exc})", 2) from None
    if isinstance(data, dict) and "components" in data:
        return _controlnet_files(data, variant)
    if variant is not None:
        raise CliError("--variant: only a controlnet-pyworker manifest (with 'components') has variants", 2)
    try:
        return parse_entries(entries_of(data))
    except ManifestProblems as exc:
        raise CliError(f"manifest {path}: {exc}", 2) from None
