"""The swarm worker's settings, all from the environment (documented in the README)."""

from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SWARMUI_DIR = "/opt/SwarmUI"
DEFAULT_LAUNCH_ARGS = ("--launch_mode none --host 127.0.0.1 --port {port} --data_dir {data_dir} "
                       "--settings_file {settings_file} --backends_file {backends_file}")


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}: expected a number, got {raw!r}") from None


def _int(name: str, default: int) -> int:
    return int(_float(name, default))


def _choice(name: str, allowed: tuple[str, ...], default: str) -> str:
    value = os.environ.get(name, "").strip().lower() or default
    if value not in allowed:
        raise ValueError(f"environment variable {name}: expected one of {', '.join(allowed)}, got {value!r}")
    return value


def default_model_roots(swarmui_dir: Path) -> list[Path]:
    """The network volume's model folder (serverless or pod mount), then the models baked into the image."""
    roots = []
    for volume in (Path("/runpod-volume"), Path("/workspace")):
        if volume.is_dir():
            roots.append(volume / "SwarmUI" / "Models")
            break
    roots.append(swarmui_dir / "Models")
    return roots


def worker_id() -> str:
    return os.environ.get("RUNPOD_POD_ID") or os.environ.get("VAST_CONTAINERLABEL") or socket.gethostname()


@dataclass
class WorkerConfig:
    swarmui_dir: Path
    launch_cmd: str
    internal_port: int
    public_port: int
    public_host: str
    public_url: str | None
    access_token: str | None
    startup_timeout: float
    model_roots: list[Path]
    work_dir: Path
    output_dir: Path
    max_restarts: int = 1
    idle_seconds: float = 120
    startup_grace_seconds: float = 600
    max_lease_seconds: float = 3600
    lease_min_seconds: float = 5
    lease_cap_seconds: float = 3600
    idle_poll_seconds: float = 5
    hold_cap_seconds: float = 3600
    wakeup_hold: str = "ready"
    concurrency: int = 8
    inline_max_bytes: int = 6 * 1024 * 1024
    stop_timeout: float = 15
    comfy_extra_args: str = ""
    refresh_debounce_seconds: float = 10
    refresh_timeout: float = 600
    http_timeout: float = 10

    @classmethod
    def from_env(cls) -> WorkerConfig:
        swarmui_dir = Path(os.environ.get("SWARMUI_DIR", DEFAULT_SWARMUI_DIR))
        launch = os.environ.get("SWARMUI_LAUNCH_CMD") or (
            f"{swarmui_dir}/src/bin/live_release/SwarmUI {DEFAULT_LAUNCH_ARGS}")
        roots_env = os.environ.get("SWARMUI_MODEL_ROOT", "")
        roots = [Path(p) for p in roots_env.split(";") if p.strip()] or default_model_roots(swarmui_dir)
        work_dir = Path(os.environ.get("SWARM_WORK_DIR") or Path(tempfile.gettempdir()) / "swarm-worker")
        volume_outputs = Path("/runpod-volume/swarm_outputs") if Path("/runpod-volume").is_dir() else None
        output_dir = Path(os.environ.get("SWARM_OUTPUT_DIR") or volume_outputs or work_dir / "jobs")
        token = os.environ.get("SWARM_ACCESS_TOKEN") or None
        if token is not None and len(token) < 16:
            raise ValueError("environment variable SWARM_ACCESS_TOKEN: must be at least 16 characters")
        return cls(
            swarmui_dir=swarmui_dir,
            launch_cmd=launch,
            internal_port=_int("SWARMUI_INTERNAL_PORT", 7810),
            public_port=_int("SWARM_PUBLIC_PORT", 7801),
            public_host=os.environ.get("SWARM_PUBLIC_HOST", "0.0.0.0"),
            public_url=(os.environ.get("SWARM_PUBLIC_URL") or "").rstrip("/") or None,
            access_token=token,
            startup_timeout=_float("SWARMUI_STARTUP_TIMEOUT", 600),
            model_roots=roots,
            work_dir=work_dir,
            output_dir=output_dir,
            max_restarts=_int("SWARMUI_MAX_RESTARTS", 1),
            idle_seconds=_float("SWARMUI_IDLE_SECONDS", 120),
            startup_grace_seconds=_float("SWARMUI_STARTUP_GRACE_SECONDS", 600),
            max_lease_seconds=_float("SWARMUI_MAX_LEASE_SECONDS", 3600),
            lease_min_seconds=_float("SWARM_LEASE_MIN_SECONDS", 5),
            lease_cap_seconds=_float("SWARM_LEASE_CAP_SECONDS", 3600),
            idle_poll_seconds=_float("SWARM_IDLE_POLL_SECONDS", 5),
            hold_cap_seconds=_float("SWARM_HOLD_CAP_SECONDS", 3600),
            wakeup_hold=_choice("SWARM_WAKEUP_HOLD", ("ready", "duration"), "ready"),
            concurrency=max(1, _int("SWARM_WORKER_CONCURRENCY", 8)),
            inline_max_bytes=_int("SWARM_INLINE_MAX_BYTES", 6 * 1024 * 1024),
            stop_timeout=_float("SWARMUI_STOP_TIMEOUT", 15),
            comfy_extra_args=os.environ.get("SWARMUI_COMFY_EXTRA_ARGS", "").strip(),
            refresh_debounce_seconds=_float("SWARMUI_REFRESH_DEBOUNCE_SECONDS", 10),
            refresh_timeout=_float("SWARMUI_REFRESH_TIMEOUT", 600),
            http_timeout=_float("SWARMUI_HTTP_TIMEOUT", 10),
        )

    @property
    def data_dir(self) -> Path:
        return self.work_dir / "Data"

    @property
    def swarm_output_dir(self) -> Path:
        """Where SwarmUI writes its outputs (served as View/...): per worker, wiped between leases."""
        return self.work_dir / "Output"

    @property
    def model_tree(self) -> Path:
        return self.work_dir / "model_tree"

    @property
    def log_file(self) -> Path:
        return self.work_dir / "swarmui.log"

    def public_base_url(self) -> str:
        """Base URL clients reach the gateway at (no token)."""
        if self.public_url:
            return self.public_url
        pod = os.environ.get("RUNPOD_POD_ID")
        if pod:
            return f"https://{pod}-{self.public_port}.proxy.runpod.net"
        return f"http://127.0.0.1:{self.public_port}"
