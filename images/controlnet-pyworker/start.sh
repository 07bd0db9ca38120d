#!/usr/bin/env bash
# Entrypoint of the controlnet-pyworker image (also a vast.ai template's on-start command).
#  - RunPod serverless (the platform sets RUNPOD_WEBHOOK_GET_JOB, or --test_input / --rp_serve_api
#    is given), or CONTROLNET_MODE=runpod: the RunPod handler, engine in-process.
#  - anything else (vast.ai serverless), or CONTROLNET_MODE=vast: the model server in the
#    background plus the vast.ai PyWorker front in front of it; if either exits, both stop.
#  - CONTROLNET_MODE=server: the model server alone (direct GPU rental, development).
# Extra arguments go to the Python entry point (e.g. --test_input '{"input": {...}}').
#
# Environment (defaults): APP_DIR (/app, else this script's repository), PYTHON (python3, the
# model env), VAST_PYTHON ($APP_DIR/.venv-vast/bin/python); MODELS_DIR, MODEL_LOG and the other
# settings the Python side reads take their defaults from handlers/controlnet_pyworker/settings.py
# (this script asks it for MODEL_LOG); MODEL_SERVER_HOST: vast mode keeps it on loopback (every port
# a vast.ai instance exposes is public, and the front forwards without a token);
# PRELOAD_MODEL (the manifest's default variant), FETCH_ON_START (1: fetch PRELOAD_MODEL's files before serving),
# WORKER_PORT (3000), PYWORKER_DIR (/workspace: the front's working directory, .has_benchmark),
# USE_SSL (true, as in vast's own start script: the instance certificate is made and signed by vast.ai
# before the front starts; false serves plain HTTP, prompts and images unencrypted), VAST_TLS_DIR (/etc),
# VAST_SIGN_CERT_URL, CONTROLNET_LOCK_FILE and the vast.ai autoscaler variables read by the vastai package.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -z "${APP_DIR:-}" ]]; then
    if [[ -d /app/handlers/controlnet_pyworker ]]; then APP_DIR=/app; else APP_DIR="$(cd "$here/../.." && pwd)"; fi
fi
PYTHON="${PYTHON:-python3}"
VAST_PYTHON="${VAST_PYTHON:-$APP_DIR/.venv-vast/bin/python}"
export PYTHONPATH="$APP_DIR${PYTHONPATH:+:$PYTHONPATH}"
export WORKER_PORT="${WORKER_PORT:-3000}"

mode="${CONTROLNET_MODE:-auto}"
if [[ "$mode" == auto ]]; then
    if [[ -n "${RUNPOD_WEBHOOK_GET_JOB:-}" || "$*" == *--test_input* || "$*" == *--rp_serve_api* ]]; then
        mode=runpod
    else
        mode=vast
    fi
fi

fetch_preload() {   # PRELOAD_MODEL's files (unset: the manifest's default variant; none: nothing)
    if [[ "${FETCH_ON_START:-1}" == 1 ]]; then
        "$PYTHON" -m handlers.controlnet_pyworker.fetch --preload
    fi
}

case "$mode" in
    runpod)
        cd "$APP_DIR"
        exec "$PYTHON" -u -m handlers.controlnet_pyworker "$@"
        ;;
    server)
        cd "$APP_DIR"
        fetch_preload
        exec "$PYTHON" -u -m handlers.controlnet_pyworker.server
        ;;
    vast)
        # One front per instance: a second start (on-start script + supervisor) would fight for WORKER_PORT.
        exec 9>"${CONTROLNET_LOCK_FILE:-/tmp/controlnet-pyworker.lock}"
        if ! flock -n 9; then echo "controlnet-pyworker is already running on this instance" >&2; exit 0; fi
        eval "$("$PYTHON" -m handlers.controlnet_pyworker.settings MODEL_LOG)"
        mkdir -p "$(dirname "$MODEL_LOG")"
        : > "$MODEL_LOG"   # no stale ready line from an earlier boot reaches the front
        cd "$APP_DIR"
        if [[ -n "${MODEL_SERVER_HOST:-}" && "$MODEL_SERVER_HOST" != 127.0.0.1 && "$MODEL_SERVER_HOST" != localhost ]]; then
            echo "vast mode: the model server stays on 127.0.0.1 (MODEL_SERVER_HOST=$MODEL_SERVER_HOST ignored): only" \
                 "the PyWorker front, which checks the autoscaler's signature, may reach it" >&2
        fi
        export MODEL_SERVER_HOST=127.0.0.1
        # vast's start_server.sh defaults USE_SSL to true and makes /etc/instance.{key,crt}, which the
        # front loads (vast-ai/pyworker start_server.sh:13,68-102; vastai lib/server.py:16-26).
        export USE_SSL="${USE_SSL:-true}"
        if [[ "$USE_SSL" == true ]]; then
            "$VAST_PYTHON" -m common.vast_tls || true   # it says why on failure
        else
            echo "USE_SSL=$USE_SSL: the PyWorker front serves plain HTTP (requests and images unencrypted)" >&2
        fi
        # A failed fetch is not final here: the server's preload fetches again and, failing, writes
        # the MODEL_SERVER_FATAL line the front reports.
        fetch_preload || echo "fetching the preload model's files failed; the server will retry" >&2
        "$PYTHON" -u -m handlers.controlnet_pyworker.server &
        server_pid=$!
        # The front keeps .has_benchmark in its working directory: the volume, so restarts skip it.
        mkdir -p "${PYWORKER_DIR:-/workspace}"
        (cd "${PYWORKER_DIR:-/workspace}" && exec "$VAST_PYTHON" -u -m handlers.controlnet_pyworker.vast) &
        front_pid=$!
        trap 'kill -TERM "$server_pid" "$front_pid" 2>/dev/null || true' TERM INT
        status=0
        wait -n "$server_pid" "$front_pid" || status=$?
        kill -TERM "$server_pid" "$front_pid" 2>/dev/null || true
        wait || true
        exit "$status"
        ;;
    *) echo "CONTROLNET_MODE must be auto, runpod, vast or server (got '$mode')" >&2; exit 2 ;;
esac
