#!/usr/bin/env bash
# Entrypoint of the swarm-worker image.
#  - RunPod serverless (the platform sets RUNPOD_WEBHOOK_GET_JOB), or SWARM_MODE=serverless:
#    the RunPod handler; it starts SwarmUI and the gateway at boot.
#  - vast.ai serverless (a workergroup sets REPORT_ADDR), or SWARM_MODE=vast: SwarmUI + gateway +
#    lease control in the background, vast's PyWorker (its own venv, VAST_PYTHON) in front; the
#    leases HartsyAI CloudBackends' "Vast.ai Serverless" section asks for. If either exits, both stop.
#  - anything else (vast.ai template, RunPod pod, plain `docker run`), or SWARM_MODE=standalone:
#    SwarmUI + gateway (+ Cloudflare quick tunnel), models from SWARM_MODEL_MANIFEST, URL printed.
# Extra arguments go to the Python entry point (e.g. --test_input '{"input": {...}}').
set -euo pipefail

APP_DIR="${APP_DIR:-/app}"
PYTHON="${PYTHON:-python3}"
VAST_PYTHON="${VAST_PYTHON:-$APP_DIR/.venv-vast/bin/python}"
cd "$APP_DIR"

mode="${SWARM_MODE:-auto}"
if [[ "$mode" == auto ]]; then
    if [[ -n "${RUNPOD_WEBHOOK_GET_JOB:-}" || "$*" == *--test_input* || "$*" == *--rp_serve_api* ]]; then
        mode=serverless
    elif [[ -n "${REPORT_ADDR:-}" ]]; then
        mode=vast
    else
        mode=standalone
    fi
fi

case "$mode" in
    serverless) exec "$PYTHON" -u -m handlers.swarm_worker "$@" ;;
    standalone)
        # A vast.ai instance: its gateway serves TLS with the instance's certificate (what CloudBackends
        # expects of vast instances), asked for here as vast's own launcher does; SWARMUI_TLS=off skips it.
        if [[ -n "${CONTAINER_ID:-}" && "${SWARMUI_TLS:-auto}" != off && -z "${SWARMUI_TLS_CERT:-}"
              && ! -f /etc/instance.crt && "$(id -u)" == 0 ]]; then
            "$PYTHON" -m common.vast_tls || echo "the gateway serves plain HTTP" >&2   # it says why on failure
        fi
        exec "$PYTHON" -u -m handlers.swarm_worker.standalone "$@" ;;
    vast)
        export PYTHONPATH="$APP_DIR${PYTHONPATH:+:$PYTHONPATH}"
        # TLS for the PyWorker and the gateway, as vast's own launcher does it (vast-ai/pyworker
        # start_server.sh: USE_SSL defaults to true, the certificate is asked for at start).
        export USE_SSL="${USE_SSL:-true}"
        if [[ "$USE_SSL" == true && ! -f /etc/instance.crt ]]; then
            "$PYTHON" -m common.vast_tls || true   # it says why on failure; lease control then refuses to start
        fi
        "$PYTHON" -u -m handlers.swarm_worker.lease_control &
        control_pid=$!
        # The PyWorker keeps .has_benchmark in its working directory: /workspace when there is one.
        (cd "${PYWORKER_DIR:-/workspace}" 2>/dev/null || cd /tmp; exec "$VAST_PYTHON" -u -m handlers.swarm_worker.vast) &
        front_pid=$!
        trap 'kill -TERM "$control_pid" "$front_pid" 2>/dev/null || true' TERM INT
        status=0
        wait -n "$control_pid" "$front_pid" || status=$?
        kill -TERM "$control_pid" "$front_pid" 2>/dev/null || true
        wait || true
        exit "$status"
        ;;
    *) echo "SWARM_MODE must be auto, serverless, vast or standalone (got '$mode')" >&2; exit 2 ;;
esac
