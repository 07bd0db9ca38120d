"""vast.ai / RunPod pod mode: SwarmUI + the gateway (+ a Cloudflare quick tunnel), no job queue.

    python -m handlers.swarm_worker.standalone      (what images/swarm-worker/start.sh runs)

1. fetch the models of `SWARM_MODEL_MANIFEST` that are missing (common.downloads);
2. start the gateway and SwarmUI, wait until SwarmUI can generate;
3. open a quick tunnel when asked (`SWARM_TUNNEL=cloudflared`, or `auto`: when cloudflared
   is installed and the instance has no proxy of its own);
4. print the public URL, `<base>/t/<token>`, and write it to `SWARM_URL_FILE`;
5. run until SIGTERM/SIGINT, or exit 1 when SwarmUI is gone for good.

The token is `SWARM_ACCESS_TOKEN`, or `SWARMUI_WORKER_TOKEN` (what HartsyAI's CloudBackends injects
into the pods and instances it creates); set it in the template so the URL survives restarts;
without it one is minted and printed. With a certificate (`SWARMUI_TLS_CERT`/`SWARMUI_TLS_KEY`, or
vast.ai's `/etc/instance.crt`) the gateway serves HTTPS.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import shutil
import sys
from pathlib import Path

from common.jobs import JobError
from common.redaction import configure_logging, register_env_secrets
from handlers.swarm_worker.config import WorkerConfig
from handlers.swarm_worker.manifest import load_manifest, prefetch_models
from handlers.swarm_worker.runtime import WorkerRuntime, run_until_stopped, stop_on_signals
from handlers.swarm_worker.swarm_process import SwarmStartError
from handlers.swarm_worker.tunnel import QuickTunnel, TunnelError

log = logging.getLogger("swarm.standalone")


def direct_base_url(cfg: WorkerConfig) -> str:
    """The gateway's address without a tunnel: SWARM_PUBLIC_URL, the RunPod pod proxy, vast.ai's mapped port."""
    if cfg.public_url or cfg.pod_id:
        return cfg.public_base_url()
    return cfg.vast_url() or cfg.public_base_url()


def tunnel_binary(cfg: WorkerConfig) -> str | None:
    """cloudflared for a quick tunnel (SWARM_TUNNEL), or None for no tunnel."""
    if cfg.tunnel not in ("auto", "cloudflared", "none"):
        raise TunnelError(f"SWARM_TUNNEL: expected auto, cloudflared or none, got {cfg.tunnel!r}")
    binary = cfg.cloudflared_bin or shutil.which("cloudflared")
    if cfg.tunnel == "cloudflared" and not binary:
        raise TunnelError("SWARM_TUNNEL=cloudflared but no cloudflared binary (set SWARM_CLOUDFLARED_BIN)")
    if cfg.tunnel == "none" or (cfg.tunnel == "auto" and (cfg.public_url or cfg.pod_id)):
        return None
    return binary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url-file", type=Path,
                        help="write the public URL here (default: SWARM_URL_FILE, else <SWARM_WORK_DIR>/public_url.txt)")
    parser.add_argument("--check", action="store_true",
                        help="start SwarmUI, wait until its backend runs, stop and exit 0 (1 if it does not come up); "
                             "the image build pre-warms with `python -m handlers.swarm_worker.prewarm` instead")
    args = parser.parse_args(argv)
    configure_logging()
    register_env_secrets(["SWARM_ACCESS_TOKEN", "SWARMUI_WORKER_TOKEN"])
    try:
        cfg = WorkerConfig.from_env()
        binary = None if args.check else tunnel_binary(cfg)
        entries = load_manifest(cfg.model_manifest) if cfg.model_manifest and not args.check else []
    except (ValueError, JobError, TunnelError) as exc:
        log.error("configuration error: %s", exc)
        return 2
    minted = not cfg.access_token
    if minted:
        cfg.access_token = secrets.token_urlsafe(32)
        log.warning("SWARM_ACCESS_TOKEN (or SWARMUI_WORKER_TOKEN) is not set: minted a token for this run "
                    "(the URL changes on restart)")

    if entries and not prefetch_models(entries, cfg.model_download_root):
        return 1

    rt = WorkerRuntime(cfg)
    stop = stop_on_signals()
    tunnel = None
    try:
        rt.start_background().result(60)
        try:
            rt.submit(rt.process.ensure_ready(cfg.startup_timeout + 5)).result()
        except SwarmStartError as exc:
            log.error("SwarmUI did not start: %s\n%s", exc, "\n".join(exc.tail[-20:]))
            return 1
        if args.check:
            log.info("SwarmUI came up: %s", rt.process.describe())
            return 0
        base = direct_base_url(cfg)
        if binary:
            tunnel = QuickTunnel(binary, f"{cfg.scheme}://127.0.0.1:{cfg.public_port}")
            try:
                base = rt.submit(tunnel.start()).result()
            except TunnelError as exc:
                log.error("quick tunnel failed: %s (the gateway is still reachable at %s)", exc, base)
                tunnel = None
        url = f"{base}/t/{cfg.access_token}"
        url_file = args.url_file or cfg.url_file
        url_file.parent.mkdir(parents=True, exist_ok=True)
        url_file.write_text(url + "\n")
        url_file.chmod(0o600)
        # A minted token can only be learnt from here, so its URL is printed (stdout, once); a token the
        # operator set stays out of the output: they know it, and logs are often shared.
        shown = url if minted else f"{base}/t/<SWARM_ACCESS_TOKEN>"
        print(f"SWARM_PUBLIC_URL={shown}", flush=True)
        print(f"SwarmUI is ready at {base} (token in the path, or 'Authorization: Bearer <token>'); "
              f"full URL in {url_file}", flush=True)
        return run_until_stopped(rt, stop)
    finally:
        if tunnel:
            rt.submit(tunnel.stop()).result(10)
        rt.close()


if __name__ == "__main__":
    sys.exit(main())
