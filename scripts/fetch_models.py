"""Download the controlnet-pyworker model files a variant needs into MODELS_DIR.

    python -m scripts.fetch_models [--variant lightning ...] [--all] [--no-eras] [--depth]
                                   [--models-dir DIR] [--manifest FILE] [--verify] [--list]

Files already present are skipped (`--verify` hashes them against the manifest and fetches
mismatches again). Downloads resume after an interruption and are checked against the
manifest's sha256 when it is pinned. Sources: hf://, https://, s3:// (env S3_ENDPOINT_URL,
AWS_*), gs:// (public objects). HF_TOKEN is used for gated Hugging Face files.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _progress_bars():
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def update(label: str, done: int, total: int | None) -> None:
        bar = bars.get(label)
        if bar is None:
            bar = bars[label] = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                                     leave=True, file=sys.stderr)
        if total and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)
        if total and done >= total:
            bar.close()

    return update


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", help="variant to fetch (repeatable; default: the manifest's)")
    parser.add_argument("--all", action="store_true", help="every variant")
    parser.add_argument("--no-eras", action="store_true", help="skip the era LoRAs")
    parser.add_argument("--depth", action="store_true", help="also the auto-depth estimator")
    parser.add_argument("--models-dir", type=Path, help="default: env MODELS_DIR or /workspace/models")
    parser.add_argument("--manifest", type=Path, help="default: env MODEL_MANIFEST, MODELS_DIR/manifest.json, packaged")
    parser.add_argument("--verify", action="store_true", help="hash files already present too")
    parser.add_argument("--list", action="store_true", help="only show what is present and missing")
    args = parser.parse_args(argv)

    if args.models_dir:
        os.environ["MODELS_DIR"] = str(args.models_dir)
    from common.jobs import JobError
    from common.redaction import configure_logging
    from handlers.controlnet_pyworker import fetch, manifest

    configure_logging(os.environ.get("LOG_LEVEL", "info"))
    try:
        m = manifest.load(args.manifest)
    except manifest.ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    models_dir = manifest.models_dir()
    names = list(m.variants) if args.all else (args.variant or [m.default_variant])
    unknown = [n for n in names if n not in m.variants]
    if unknown:
        print(f"error: unknown variant(s) {', '.join(unknown)} (known: {', '.join(m.variants)})", file=sys.stderr)
        return 2
    components = list({c.key: c for n in names
                       for c in m.components_for(n, eras=not args.no_eras, depth=args.depth)}.values())

    missing = fetch.missing_files(components, models_dir)
    print(f"manifest {m.source}; MODELS_DIR {models_dir}; {len(components)} components, "
          f"{sum(len(c.files) for c in components)} files, {len(missing)} missing")
    if args.list:
        for entry, path in missing:
            print(f"  missing {path}  <- {entry.source}")
        return 0
    try:
        fetched = fetch.ensure(components, models_dir, progress=_progress_bars(), verify_existing=args.verify)
    except JobError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"fetched {len(fetched)} file(s); everything for {', '.join(names)} is in {models_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
