"""`gpuworker models ...`: fill a volume with the files a manifest names (parallel, resumable,
checksummed), or with a trainer model's Hugging Face weights the way the trainer itself fetches them."""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scripts.gpuworker.console import CliError, Console, register_key

if TYPE_CHECKING:
    from common.model_files import ModelFile

DEFAULT_MAX_BYTES = 1 << 40  # 1 TiB: a manifest entry without `size` is not capped further


class Fetcher:
    """`common.model_files.fetch_file` with a progress bar per file; a failure is a record, not a raise."""

    def __init__(self, dest: Path, bar: Any, *, verify_existing: bool, allow_private: bool):
        self.dest = dest
        self.bar = bar
        self.verify_existing = verify_existing
        self.allow_private = allow_private

    def fetch(self, item: ModelFile) -> dict:
        from common.jobs import JobError
        from common.model_files import fetch_file

        target = self.dest / item.path
        verify = None
        if target.is_file() and item.sha256 and self.verify_existing:
            verify = self.bar.add_task(f"verify {item.path}", total=target.stat().st_size)
        task = None

        def progress(done: int, total: int | None) -> None:
            nonlocal task
            if task is None:
                task = self.bar.add_task(item.path, total=item.size)
            self.bar.update(task, completed=done, total=total if total is not None else item.size)

        try:
            return fetch_file(item, self.dest, verify_existing=self.verify_existing, max_bytes=DEFAULT_MAX_BYTES,
                              allow_private=self.allow_private, progress=progress,
                              on_hashed=(lambda n: self.bar.advance(verify, n)) if verify is not None else None)
        except JobError as exc:
            if task is None:
                task = self.bar.add_task(item.path, total=item.size)
            self.bar.update(task, description=f"[red]failed[/red] {item.path}")
            return {"path": item.path, "url": item.source.split("?", 1)[0], "status": "failed", "error": exc.message}
        finally:
            if verify is not None:
                self.bar.remove_task(verify)


def cmd_fetch(args: argparse.Namespace, console: Console) -> int:
    from common.model_files import gcs_token
    from scripts.gpuworker.manifest import load_manifest  # pydantic: not needed for --help

    register_key(gcs_token() or "")
    files = load_manifest(Path(args.manifest), variant=args.variant)
    if args.only:
        files = [f for f in files if any(part in f.path for part in args.only)]
        if not files:
            raise CliError(f"--only {' '.join(args.only)}: no manifest entry matches", 2)
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    with console.progress(transfer=True) as bar:
        fetcher = Fetcher(dest, bar, verify_existing=not args.trust_existing, allow_private=args.allow_private)
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            results = list(pool.map(fetcher.fetch, files))
    counts = {s: sum(r["status"] == s for r in results) for s in ("fetched", "present", "failed")}
    lines = [f"{r['status']:>8}  {r['path']}" + (f"  ({r['error']})" if r.get("error") else "")
             + (f"  [replaced: {r['replaced']}]" if r.get("replaced") else "") for r in results]
    lines.append(f"{counts['fetched']} fetched, {counts['present']} already present, {counts['failed']} failed "
                 f"-> {dest}")
    console.result({"dest": str(dest), **counts, "files": results}, "\n".join(lines))
    return 1 if counts["failed"] else 0


def cmd_trainer(args: argparse.Namespace, console: Console) -> int:
    """A trainer model's weights into the trainer's shared `models/` dir, with its markers and locks."""
    import os

    from common.jobs import JobError
    from handlers.diffusion_pipe_trainer import model_fetch, workspace
    from handlers.diffusion_pipe_trainer.models import JOYCAPTION_DIR, JOYCAPTION_REPO, REGISTRY, Fetch

    unknown = [m for m in args.model_types if m not in REGISTRY]
    if unknown:
        raise CliError(f"model_type: {', '.join(unknown)} unknown (known: {', '.join(REGISTRY)})", 2)
    models_dir = Path(args.models_dir) if args.models_dir else workspace.models_dir()
    items = [item for m in args.model_types for item in REGISTRY[m].fetch]
    if args.joycaption:
        items.append(Fetch(JOYCAPTION_REPO, JOYCAPTION_DIR, required=("config.json",)))
    token = os.environ.get("HF_TOKEN") or None
    results = []
    with console.progress() as bar:
        task = bar.add_task("models", total=len(items), status="")
        for item in items:
            present = model_fetch.is_complete(models_dir, item)
            bar.update(task, status=item.repo_id)
            try:
                model_fetch.ensure(models_dir, item, token=token)
            except JobError as exc:
                results.append({"repo": item.repo_id, "dir": item.local_dir, "status": "failed", "error": exc.message})
            except Exception as exc:  # huggingface_hub's offline/connection errors: one line, not a traceback
                results.append({"repo": item.repo_id, "dir": item.local_dir, "status": "failed",
                                "error": f"{type(exc).__name__}: {exc}"})
            else:
                results.append({"repo": item.repo_id, "dir": item.local_dir,
                                "status": "present" if present else "fetched"})
            bar.advance(task)
    failed = sum(r["status"] == "failed" for r in results)
    console.result({"models_dir": str(models_dir), "items": results},
                   "\n".join(f"{r['status']:>8}  {r['repo']} -> {models_dir / r['dir']}"
                             + (f"  ({r['error']})" if r.get("error") else "") for r in results))
    return 1 if failed else 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    group = sub.add_parser("models", help="pre-fill a (network) volume with model files")
    cmds = group.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = cmds.add_parser("fetch", parents=[common], help="download what a manifest lists into --dest")
    p.add_argument("manifest", help="manifest JSON (formats: docs/gpuworker.md#model-volumes)")
    p.add_argument("--dest", required=True, help="volume folder the manifest's paths are relative to")
    p.add_argument("-j", "--jobs", type=int, default=4, help="parallel downloads (default 4)")
    p.add_argument("--variant", help="controlnet-pyworker manifest: only what this variant needs (e.g. lightning)")
    p.add_argument("--only", nargs="+", metavar="TEXT", help="only entries whose path contains one of these")
    p.add_argument("--trust-existing", action="store_true",
                   help="skip re-hashing files already on the volume (size still checked)")
    p.add_argument("--allow-private", action="store_true",
                   help="allow sources on private/loopback addresses (e.g. a LAN MinIO)")
    p.set_defaults(func=cmd_fetch)

    p = cmds.add_parser("trainer", parents=[common],
                        help="a diffusion-pipe-trainer model's Hugging Face weights into its models/ dir")
    p.add_argument("model_types", nargs="+", help="flux, sdxl, wan13, wan14b_t2v, wan14b_i2v, qwen, z_image_turbo")
    p.add_argument("--models-dir", help="default: the trainer's (<volume>/diffusion_pipe_working_folder/models)")
    p.add_argument("--joycaption", action="store_true", help="also the JoyCaption captioning model")
    p.set_defaults(func=cmd_trainer)
