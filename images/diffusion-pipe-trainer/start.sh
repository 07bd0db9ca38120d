#!/usr/bin/env bash
# Entry point of the diffusion-pipe-trainer image: checks, then the RunPod worker.
#   GPU_PREFLIGHT=0   skip the CUDA check (CPU smoke tests of the image)
#   SERVE_API_LOCALLY=true   run the SDK's local API (--rp_serve_api) on 0.0.0.0:8000 instead of the worker loop
set -euo pipefail

: "${DIFFUSION_PIPE_DIR:=/diffusion-pipe}"
export DIFFUSION_PIPE_DIR
# Weights and the Hub cache live on the network volume when one is mounted.
if [ -z "${DIFFUSION_PIPE_WORKING_DIR:-}" ] && [ -d /runpod-volume ]; then
    export DIFFUSION_PIPE_WORKING_DIR=/runpod-volume/diffusion_pipe_working_folder
fi
if [ -n "${DIFFUSION_PIPE_WORKING_DIR:-}" ]; then
    mkdir -p "$DIFFUSION_PIPE_WORKING_DIR/models"
    export HF_HOME="${HF_HOME:-$DIFFUSION_PIPE_WORKING_DIR/hf_home}"
fi
echo "diffusion-pipe-trainer: engine ${DIFFUSION_PIPE_DIR} ($(cat "${DIFFUSION_PIPE_DIR}/.commit" 2>/dev/null || echo 'commit unknown')), working dir ${DIFFUSION_PIPE_WORKING_DIR:-<local temp>}"
if [ -n "${DIFFUSION_PIPE_WORKING_DIR:-}" ]; then
    echo "models on the volume: $(ls "$DIFFUSION_PIPE_WORKING_DIR/models" 2>/dev/null | tr '\n' ' ')"
fi

if [ ! -f "${DIFFUSION_PIPE_DIR}/train.py" ]; then
    echo "FATAL: ${DIFFUSION_PIPE_DIR}/train.py not found (DIFFUSION_PIPE_DIR)" >&2
    exit 1
fi
if [ "${GPU_PREFLIGHT:-1}" = "1" ]; then
    python -c 'import torch, sys; torch.cuda.init(); print(f"GPUs: {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")' \
        || { echo "FATAL: CUDA is not usable in this container (driver/CUDA mismatch?)" >&2; exit 1; }
fi

cd "${APP_DIR:-/app}"
if [ "${SERVE_API_LOCALLY:-false}" = "true" ]; then
    exec python -u -m handlers.diffusion_pipe_trainer --rp_serve_api --rp_api_host=0.0.0.0
fi
exec python -u -m handlers.diffusion_pipe_trainer "$@"
