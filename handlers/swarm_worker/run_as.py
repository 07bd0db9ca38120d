"""SwarmUI and ComfyUI under a uid of their own (`SWARMUI_RUN_AS=user[:group]`, or `uid[:gid]`).

Whoever holds a lease drives SwarmUI, and through it ComfyUI, which runs arbitrary custom-node
code. Under the worker's own uid that code could read `/proc/<worker>/environ` (the worker's
credentials: RunPod key, upload keys, HF token, gateway token) and the worker's files. Under
another uid it cannot; it gets only what it needs:

- its own writable places: SwarmUI's data, output and model-tree folders in the work dir, and a
  home (dotnet, pip and Hugging Face caches);
- the volume's model folders stay writable for it (group access: the folder's group becomes its
  group, with setgid so new folders keep it), so model downloads land where they always did;
- no supplementary groups, and the environment the worker already filters (swarm_process.child_env).

Only a worker running as root can switch; otherwise the setting is refused at start.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("swarm.run_as")


@dataclass(frozen=True)
class RunAs:
    uid: int
    gid: int
    name: str
    home: Path | None  # None: the account has no usable home; one is made in the work dir

    def spawn_kwargs(self) -> dict:
        """Keyword arguments for subprocess / asyncio.create_subprocess_exec."""
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def parse_run_as(spec: str | None) -> RunAs | None:
    """`SWARMUI_RUN_AS`: a user name or uid, optionally `:group` (name or gid)."""
    spec = (spec or "").strip()
    if not spec:
        return None
    if os.geteuid() != 0:
        raise ValueError(f"environment variable SWARMUI_RUN_AS={spec!r}: the worker must run as root to start "
                         "SwarmUI under another user (unset it to run SwarmUI as the worker's user)")
    user, _, group = spec.partition(":")
    try:
        account = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        if not user.isdigit():
            raise ValueError(f"environment variable SWARMUI_RUN_AS: no user named {user!r}") from None
        account = None
    uid = account.pw_uid if account else int(user)
    if uid == 0:
        raise ValueError("environment variable SWARMUI_RUN_AS: must name a user other than root")
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise ValueError(f"environment variable SWARMUI_RUN_AS: no group named {group!r}") from None
    else:
        gid = account.pw_gid if account else uid
    home = Path(account.pw_dir) if account and account.pw_dir and Path(account.pw_dir).is_dir() else None
    return RunAs(uid=uid, gid=gid, name=account.pw_name if account else str(uid), home=home)


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    """Hand `root` and everything in it to uid:gid; symlinks themselves, never what they point at."""
    if not root.exists():
        return
    os.chown(root, uid, gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def _share_folders(root: Path, gid: int) -> int:
    """Give group `gid` write access to every folder under `root` (files keep their owners); returns how
    many folders changed."""
    changed = 0
    for dirpath, _dirnames, _files in os.walk(root):
        st = os.stat(dirpath)
        mode = stat.S_IMODE(st.st_mode)
        if st.st_gid != gid or mode & 0o2070 != 0o2070:
            os.chown(dirpath, -1, gid)
            os.chmod(dirpath, mode | 0o2070)
            changed += 1
    return changed


def prepare_run_as(run_as: RunAs, *, own: list[Path], shared: list[Path], home_fallback: Path) -> dict[str, str]:
    """Make `own` folders the user's, `shared` (volume) folders group-writable for it; returns the
    environment entries that name the user (HOME, USER, LOGNAME)."""
    home = run_as.home
    if home is None:
        home = home_fallback
        home.mkdir(parents=True, exist_ok=True)
        own = [*own, home]
    for folder in own:
        folder.mkdir(parents=True, exist_ok=True)
        _chown_tree(folder, run_as.uid, run_as.gid)
    for folder in shared:
        if folder.is_dir():
            n = _share_folders(folder, run_as.gid)
            if n:
                log.info("%d folder(s) under %s made writable for SwarmUI's group %d", n, folder, run_as.gid)
    return {"HOME": str(home), "USER": run_as.name, "LOGNAME": run_as.name}
