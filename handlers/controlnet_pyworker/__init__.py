"""controlnet-pyworker: SDXL + depth ControlNet (Lightning / Hyper / base, era LoRAs).

Entry points: `python -m handlers.controlnet_pyworker` or `python -m handlers.controlnet_pyworker.handler`
(RunPod handler), `python -m handlers.controlnet_pyworker.server` (FastAPI model server),
`python -m handlers.controlnet_pyworker.vast` (vast.ai PyWorker front, run from .venv-vast); the
start script also runs `python -m common.vast_tls` (vast.ai instance certificate, from .venv-vast),
`python -m handlers.controlnet_pyworker.fetch` (the image's model fetch) and
`python -m handlers.controlnet_pyworker.settings` (settings for start.sh). Settings: `settings.py`.
Importing this package imports nothing heavy: the vast.ai front's venv has no torch or pydantic.
"""
