#!/usr/bin/env bash
# Entrypoint of the swarm-worker image.
#  - RunPod serverless (the platform sets RUNPOD_WEBHOOK_GET_JOB), or SWARM_MODE=serverless:
#    the RunPod handler; it starts SwarmUI and the gateway at boot.
#  - anything else (vast.ai template, RunPod pod, plain `docker run`), or SWARM_MODE=standalone:
#    SwarmUI + gateway (+ Cloudflare quick tunnel), models from SWARM_MODEL_MANIFEST, URL printed.
# Extra arguments go to the Python entry point (e.g. --test_input '{"input": {...}}').
set -euo pipefail

APP_DIR="${APP_DIR:-/app}"
PYTHON="${PYTHON:-python3}"
cd "$APP_DIR"

mode="${SWARM_MODE:-auto}"
if [[ "$mode" == auto ]]; then
    if [[ -n "${RUNPOD_WEBHOOK_GET_JOB:-}" || "$*" == *--test_input* || "$*" == *--rp_serve_api* ]]; then
        mode=serverless
    else
        mode=standalone
    fi
fi

case "$mode" in
    serverless) exec "$PYTHON" -u -m handlers.swarm_worker "$@" ;;
    standalone) exec "$PYTHON" -u -m handlers.swarm_worker.standalone "$@" ;;
    *) echo "SWARM_MODE must be auto, serverless or standalone (got '$mode')" >&2; exit 2 ;;
esac
