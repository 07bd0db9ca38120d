# Everything runs from a virtual environment in .venv (created by `make setup`).
# The vast.ai front (vastai's PyWorker) lives in .venv-vast: its exact pins clash with runpod.
PYTHON ?= python3
VENV := .venv
VAST_VENV := .venv-vast
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
VAST_STAMP := $(VAST_VENV)/.installed
IMAGE_TAG ?= dev
TARGET ?= gpu
BASE_IMAGE ?=
PYTEST_ARGS ?=

.PHONY: setup demo test test-docker build lint bench clean

setup: $(STAMP) $(VAST_STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[controlnet,trainer,swarm,dev]'
	touch $@

$(VAST_STAMP): images/controlnet-pyworker/requirements-vast.txt
	test -x $(VAST_VENV)/bin/python || $(PYTHON) -m venv $(VAST_VENV)
	$(VAST_VENV)/bin/python -m pip install -q -r images/controlnet-pyworker/requirements-vast.txt
	touch $@

demo: setup
	$(PY) -m scripts.demo

test: setup
	$(PY) -m pytest -rs $(PYTEST_ARGS)

test-docker: setup
	$(PY) -m pytest -m docker -rs $(PYTEST_ARGS)

build: setup
	$(PY) -m scripts.build_images --tag $(IMAGE_TAG) --target $(TARGET) $(if $(BASE_IMAGE),--base-image $(BASE_IMAGE))

lint: setup
	$(VENV)/bin/ruff check common handlers scripts tests
	$(VENV)/bin/hadolint images/*/Dockerfile
	$(VENV)/bin/actionlint .github/workflows/*.yml

bench: setup
	$(PY) -m scripts.bench_uploads
	$(PY) -m scripts.bench_zip
	$(PY) -m scripts.bench_controlnet
	$(PY) -m scripts.bench_trainer
	$(PY) -m scripts.bench_swarm_gateway

clean:
	rm -rf $(VENV) $(VAST_VENV) outputs .pytest_cache
