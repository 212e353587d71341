# coldstream: two commands on a fresh machine.
#   make demo   run the live pipeline on bundled data, embedded Redis and shipped weights
#   make test   run the test suite (import contracts, mypy, alert rules, pytest)
# Both create .venv when missing. CPU torch is the default; see README "CUDA" for the GPU build.

PYTHON        ?= python3
VENV          ?= .venv
PY            := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
# Extra pip index for torch (e.g. the PyTorch CPU or CUDA wheel index); empty = default index.
TORCH_INDEX_URL ?=
PYTEST_ARGS   ?=

# Data and pretrained picker weights that live beside the repository (never committed).
SHARED_DIR    ?= $(abspath $(CURDIR)/../shared)
ifneq ($(wildcard $(SHARED_DIR)/data),)
export COLDSTREAM_SHARED_DIR := $(SHARED_DIR)
endif

.PHONY: venv demo test test-fast lint bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/coldstream demo

lint: venv
	$(VENV)/bin/lint-imports
	$(PY) -m mypy streamer bench
	@if command -v promtool >/dev/null 2>&1; then \
		promtool check rules deploy/prometheus/alerts.yml; \
	else echo "promtool not installed: alert rules checked by the pytest YAML test only"; fi

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: venv
	$(PY) bench/ingest.py
	$(PY) bench/denoiser.py
	$(PY) bench/pipeline.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .hypothesis *.egg-info
