# Berth: `make run` brings the platform up on embedded defaults; `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP := $(VENV)/.installed-dev
PYTEST_ARGS ?=

.PHONY: run test test-e2e lint format venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# A second run skips the install unless a requirements file changed.
$(RUNTIME_STAMP): requirements.txt | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(DEV_STAMP): requirements.txt requirements-dev.txt | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(RUNTIME_STAMP) $@

venv: $(RUNTIME_STAMP)

run: $(RUNTIME_STAMP)
	$(PY) -m control_plane.launcher

test: $(DEV_STAMP)
	$(PY) -m pytest -m "not browser" $(PYTEST_ARGS)
	# Real Chromium in its own invocation (exit 5 = nothing selected by PYTEST_ARGS).
	$(PY) -m pytest -m browser tests/browser $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-e2e: $(DEV_STAMP)
	$(PY) -m pytest -m e2e $(PYTEST_ARGS)

lint: $(DEV_STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy .

format: $(DEV_STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache
