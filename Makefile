# One-command set-up: `make demo` and `make test` create .venv if needed, install torch (the exact
# CPU pin, first, so nothing drags in a CUDA build) and then the project with its dev extras.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sublim-installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-all typecheck lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/sublim demo

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-all: setup
	$(BIN)/python -m pytest -q -m "slow or not slow"

typecheck: setup
	$(BIN)/python -m mypy

lint: setup
	$(BIN)/python -m ruff check src tests

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
