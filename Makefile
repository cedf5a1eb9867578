# The two commands a new user needs are `make demo` and `make test` (see README.md).
# Both create .venv and install the pinned dependencies on first use.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo up test test-fast lint typecheck train bench clean help

help:
	@echo "make demo   - set up, train if needed, start the local stack, run the comparison, write reports/"
	@echo "make test   - set up, then run the whole test suite (what .ci/run runs)"
	@echo "make up     - start the local stack and leave it running (Ctrl-C stops it)"
	@echo "make train  - train and publish a new model version"
	@echo "make lint   - ruff"

setup: $(STAMP)

# Reinstall when the pins change. requirements.lock constrains the whole tree so a fresh
# machine gets exactly the versions the tests ran with.
$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip==25.3" 2>&1 | sed '/is ignored: it is neither/d'
	$(PY) -m pip install --quiet -c requirements.lock -e ".[dev]" 2>&1 \
		| sed '/is ignored: it is neither a file nor a directory/d'  # noise from some pip configs
	@touch $(STAMP)

demo: setup
	$(PY) -m devstack demo

up: setup
	$(PY) -m devstack up

train: setup
	$(PY) -m trainer

# Static checks first (seconds), then the suite: unit, integration (real servers on loopback),
# with Docker- and GPU-only tests skipped, each with its reason, where those are absent.
test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy trainer torch_service tf_serving gateway serving_core devstack
	$(PY) -m pytest -ra

test-fast: setup
	$(PY) -m pytest -ra -m "not slow and not integration"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy trainer torch_service tf_serving gateway serving_core devstack

bench: setup
	@ls benchmarks/*.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
