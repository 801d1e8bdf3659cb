# storyreel — the two commands.
#   make demo   sets up .venv (first time only) and renders/generates the example 4-shot scene
#   make test   sets up .venv (first time only) and runs the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.storyreel-installed
DEMO_SCRIPT ?= examples/meeting-4shots.yaml
DEMO_OUT ?= outputs/demo
PYTEST_ARGS ?=

.PHONY: demo test test-fast setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "storyreel needs Python 3.11 or newer; set PYTHON=/path/to/python3.11"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,backbones,ingest]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/storyreel demo --script $(DEMO_SCRIPT) --out $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) outputs .pytest_cache .hypothesis
