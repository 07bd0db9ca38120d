"""The swarm worker's settings: `WorkerConfig.from_env()` is where the worker reads its environment
(documented in docs/swarm-worker.md). Standard library only: the vast.ai PyWorker side
(handlers.swarm_worker.vast, in .venv-vast) imports it too."""

from __future__ import annotations

import os
import socket
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from handlers.swarm_worker.run_as import RunAs, parse_run_as, prepare_run_as

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


MIN_TOKEN_LENGTH = 16
TOKEN_VARIABLES = ("SWARM_ACCESS_TOKEN", "SWARMUI_WORKER_TOKEN")  # ours; the one HartsyAI's CloudBackends injects
# vast.ai gives every instance a certificate signed by its own root CA (what CloudBackends checks with UseTls).
VAST_INSTANCE_CERT = Path("/etc/instance.crt")
VAST_INSTANCE_KEY = Path("/etc/instance.key")


def _aliased(name: str, alias: str) -> str | None:
    """The value of `name`, else of `alias` (HartsyAI's name for the same setting); both set must agree."""
    value, other = os.environ.get(name, "").strip(), os.environ.get(alias, "").strip()
    if value and other and value != other:
        raise ValueError(f"environment variables {name} and {alias} name the same setting with different values: "
                         "set one of them")
    return value or other or None


def _port(name: str, alias: str, default: int) -> int:
    raw = _aliased(name, alias)
    if raw is None:
        return default
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ValueError(f"environment variable {name} ({alias}): expected a port number, got {raw!r}")
    return int(raw)


def access_token() -> str | None:
    """A fixed gateway token from the environment (SWARM_ACCESS_TOKEN or SWARMUI_WORKER_TOKEN)."""
    token = _aliased(*TOKEN_VARIABLES)
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        name = next(n for n in TOKEN_VARIABLES if os.environ.get(n, "").strip() == token)
        raise ValueError(f"environment variable {name}: must be at least {MIN_TOKEN_LENGTH} characters")
    return token


def tls_files() -> tuple[Path, Path] | None:
    """The gateway's certificate and key: SWARMUI_TLS_CERT/SWARMUI_TLS_KEY, else vast.ai's instance
    certificate when it is there (SWARMUI_TLS=off serves plain HTTP anyway)."""
    cert, key = os.environ.get("SWARMUI_TLS_CERT", "").strip(), os.environ.get("SWARMUI_TLS_KEY", "").strip()
    if bool(cert) != bool(key):
        raise ValueError("environment variables SWARMUI_TLS_CERT and SWARMUI_TLS_KEY: set both or neither")
    if cert:
        for name, path in (("SWARMUI_TLS_CERT", cert), ("SWARMUI_TLS_KEY", key)):
            if not Path(path).is_file():
                raise ValueError(f"environment variable {name}: no such file {path!r}")
        return Path(cert), Path(key)
    mode = _choice("SWARMUI_TLS", ("auto", "off"), "auto")
    if mode == "auto" and VAST_INSTANCE_CERT.is_file() and VAST_INSTANCE_KEY.is_file():
        return VAST_INSTANCE_CERT, VAST_INSTANCE_KEY
    return None


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


def lease_control_port() -> int:
    """The loopback port of the vast.ai lease control (lease_control.py), which vast.py forwards to."""
    return _int("SWARM_LEASE_CONTROL_PORT", 18000)


def _env(name: str) -> str | None:
    return os.environ.get(name, "").strip() or None


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
    tls_cert: Path | None = None
    tls_key: Path | None = None
    run_as: RunAs | None = None
    pod_id: str | None = None  # RunPod's RUNPOD_POD_ID
    worker_id: str = field(default_factory=socket.gethostname)
    vast_public_ip: str | None = None  # vast.ai's PUBLIC_IPADDR
    vast_public_port: str | None = None  # vast.ai's VAST_TCP_PORT_<public_port>: the gateway's mapped port
    lease_control_port: int = 18000
    model_manifest: str | None = None
    model_download_root: Path | None = None
    tunnel: str = "auto"
    cloudflared_bin: str | None = None
    url_file: Path | None = None

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
        tls = tls_files()
        public_port = _port("SWARM_PUBLIC_PORT", "SWARMUI_PUBLIC_PORT", 7801)
        pod_id = _env("RUNPOD_POD_ID")
        cfg = cls(
            swarmui_dir=swarmui_dir,
            launch_cmd=launch,
            internal_port=_int("SWARMUI_INTERNAL_PORT", 7810),
            public_port=public_port,
            public_host=_aliased("SWARM_PUBLIC_HOST", "SWARMUI_PUBLIC_HOST") or "0.0.0.0",
            public_url=(os.environ.get("SWARM_PUBLIC_URL") or "").rstrip("/") or None,
            access_token=access_token(),
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
            tls_cert=tls[0] if tls else None,
            tls_key=tls[1] if tls else None,
            run_as=parse_run_as(os.environ.get("SWARMUI_RUN_AS")),
            pod_id=pod_id,
            worker_id=pod_id or _env("VAST_CONTAINERLABEL") or socket.gethostname(),
            vast_public_ip=_env("PUBLIC_IPADDR"),
            vast_public_port=_env(f"VAST_TCP_PORT_{public_port}"),
            lease_control_port=lease_control_port(),
            model_manifest=_env("SWARM_MODEL_MANIFEST"),
            model_download_root=Path(_env("SWARM_MODEL_DOWNLOAD_ROOT") or roots[0]),
            tunnel=(_env("SWARM_TUNNEL") or "auto").lower(),  # checked by standalone.tunnel_binary, its only user
            cloudflared_bin=_env("SWARM_CLOUDFLARED_BIN"),
            url_file=Path(_env("SWARM_URL_FILE") or work_dir / "public_url.txt"),
        )
        cfg.server_ssl_context()  # a certificate that does not load fails here, naming the variables
        return cfg

    def server_ssl_context(self) -> ssl.SSLContext | None:
        """The gateway's TLS context (None: plain HTTP, e.g. behind RunPod's HTTPS proxy)."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"TLS certificate {self.tls_cert} / key {self.tls_key} (SWARMUI_TLS_CERT, "
                             f"SWARMUI_TLS_KEY) do not load: {exc}") from None
        return ctx

    def prepare_run_as(self) -> dict[str, str]:
        """Before each SwarmUI start under `run_as`: its folders, the volume's model folders; its env entries."""
        assert self.run_as is not None
        shared = [r for r in self.model_roots if not r.is_relative_to(self.swarmui_dir)]
        return prepare_run_as(self.run_as, own=[self.data_dir, self.swarm_output_dir, self.model_tree],
                              shared=shared, home_fallback=self.work_dir / "home")

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

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
        if self.pod_id:
            return f"https://{self.pod_id}-{self.public_port}.proxy.runpod.net"
        return f"{self.scheme}://127.0.0.1:{self.public_port}"

    def vast_url(self) -> str | None:
        """The gateway as vast.ai maps it, `<scheme>://PUBLIC_IPADDR:VAST_TCP_PORT_<port>` (None elsewhere)."""
        if self.vast_public_ip and self.vast_public_port:
            return f"{self.scheme}://{self.vast_public_ip}:{self.vast_public_port}"
        return None
