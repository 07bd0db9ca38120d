"""Files SwarmUI reads at start (settings, backends) and the per-worker model tree it scans.

SwarmUI writes `model_metadata.ldb` into every model folder it scans. On a network volume
shared by several workers that means concurrent writers on one LiteDB file, so SwarmUI is
pointed at a per-worker tree of real folders holding symlinks to the volume's model files:
its metadata files land in the tree, never on the volume.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger("swarm.files")

SKIP_SUFFIXES = (".ldb", ".part", ".partial", ".partial.json", ".tmp", ".lock")


def fds_escape(text: str) -> str:
    """Escape a value the way FreneticUtilities' `FDSUtility.Escape` does: FDS has no quoting, so
    a value is the raw text after `key:`; only `\\s` (backslash), `\\t`, `\\n`, `\\r` and `\\x`
    (nothing, guarding leading/trailing spaces) are unescaped when SwarmUI reads it back."""
    text = text.replace("\\", "\\s").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    if text.endswith(" "):
        text += "\\x"
    if text.startswith(" "):
        text = "\\x" + text
    return text


def fds(data: dict, indent: int = 0) -> str:
    """Render a nested dict in SwarmUI's FDS format (`key: value`, sections indented by tabs).

    Empty values (None, "") are left out so that SwarmUI's default applies: FDS has no way to
    quote, and `key: ""` would be the two-character string `""` (as ComfyUI's `ExtraArgs` it became
    an empty argv element and ComfyUI's argparse exited)."""
    lines = []
    for key, value in data.items():
        key = str(key)
        if not key or any(c in key for c in ":=\t\n\r") or key.strip() != key:
            raise ValueError(f"FDS key {key!r} is not a plain name")
        pad = "\t" * indent
        if isinstance(value, dict):
            body = fds(value, indent + 1)
            if body:
                lines.append(f"{pad}{key}:")
                lines.append(body)
        elif value is None or value == "":
            continue
        else:
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            lines.append(f"{pad}{key}: {fds_escape(text)}")
    return "\n".join(lines)


# SwarmUI compares the remote address with each comma-separated entry of `AuthBypassIPs`, untrimmed
# (mcmonkeyprojects/SwarmUI src/Core/WebServer.cs:192); left out, the default exempts loopback,
# which is where the gateway and a tunnel connect from. This entry matches no address.
NO_BYPASS_IPS = "none"


def settings_fds(*, model_root: Path, output_dir: Path, port: int, internal_auth: str) -> str:
    return fds({
        "IsInstalled": True,  # skips the install wizard, which blocks the API when headless
        "LaunchMode": "none",
        "Paths": {"ModelRoot": model_root, "OutputPath": output_dir},
        "Network": {
            "Host": "127.0.0.1",
            "Port": port,
            # SwarmUI moves to the next free port when its port is taken (mcmonkeyprojects/SwarmUI
            # src/Core/Settings.cs:266, src/Core/Program.cs:775): the worker would then talk to
            # whatever holds the port. Fail instead.
            "PortCanChange": False,
            # Everything reaches SwarmUI from loopback (gateway, tunnel): drop the loopback
            # exemption so the internal port also needs the gateway's secret.
            "RequiredAuthorization": internal_auth,
            "AuthBypassIPs": NO_BYPASS_IPS,
        },
        "Maintenance": {"CheckForUpdates": False},
    }) + "\n"


def backends_fds(extra_args: str = "") -> str:
    """One self-start ComfyUI backend. `extra_args` are ComfyUI arguments (`--cpu` for the build's
    pre-warm); empty means none, and then the key is left out."""
    return fds({"0": {
        "type": "comfyui_selfstart",
        "title": "ComfyUI",
        "enabled": True,
        "settings": {
            "StartScript": "dlbackend/ComfyUI/main.py",
            "ExtraArgs": extra_args.strip(),
            "AutoUpdate": False,
            "UpdateManagedNodes": False,
            "FrontendVersion": "None",
            "EnablePreviews": True,
            "GPU_ID": 0,
            "OverQueue": 1,
            "AutoRestart": True,
        },
    }}) + "\n"


def write_swarm_config(data_dir: Path, *, model_root: Path, output_dir: Path, port: int,
                       internal_auth: str, comfy_extra_args: str = "") -> tuple[Path, Path]:
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = data_dir / "Settings.fds"
    backends = data_dir / "Backends.fds"
    settings.write_text(settings_fds(model_root=model_root, output_dir=output_dir, port=port,
                                     internal_auth=internal_auth))
    os.chmod(settings, 0o600)
    backends.write_text(backends_fds(comfy_extra_args))
    return settings, backends


def build_model_tree(sources: list[Path], tree: Path) -> dict[str, int]:
    """Mirror the model folders of `sources` into `tree`: real folders, symlinked files.

    The first source holding a path wins. Metadata/partial files are skipped, dangling links
    (files removed from the volume) are dropped, and files SwarmUI wrote into the tree stay.
    """
    tree.mkdir(parents=True, exist_ok=True)
    linked = removed = 0
    wanted: set[Path] = set()
    for source in sources:
        if not source.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(source, followlinks=True):
            rel = Path(dirpath).relative_to(source)
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            (tree / rel).mkdir(parents=True, exist_ok=True)
            for name in filenames:
                if name.startswith(".") or name.lower().endswith(SKIP_SUFFIXES):
                    continue
                link = tree / rel / name
                if link in wanted:
                    continue
                wanted.add(link)
                target = Path(dirpath) / name
                if link.is_symlink():
                    if Path(os.readlink(link)) == target:
                        continue
                    link.unlink()
                elif link.exists():
                    continue  # a real file SwarmUI put there (e.g. a downloaded model)
                link.symlink_to(target)
                linked += 1
    for dirpath, _dirnames, filenames in os.walk(tree):
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_symlink() and path not in wanted:
                path.unlink()
                removed += 1
    log.info("model tree %s: %d new links, %d removed, sources %s", tree, linked, removed,
             [str(s) for s in sources if s.is_dir()])
    return {"linked": linked, "removed": removed, "total": len(wanted)}


def wipe_dir(path: Path) -> int:
    """Delete everything inside `path` (not `path` itself); returns the number of entries removed."""
    if not path.is_dir():
        return 0
    count = 0
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
        count += 1
    return count
