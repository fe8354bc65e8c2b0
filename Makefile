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

.PHONY: setup browser demo test test-all typecheck lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/sublim demo

# Headless Chromium for the report-rendering test (Debian package; skipped when not root).
CHROMIUM := /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || echo "chromium not installed: the report-rendering tests will be skipped"

test: setup browser
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-all: setup
	$(BIN)/python -m pytest -q -m "slow or not slow"

typecheck: setup
	$(BIN)/python -m mypy

lint: setup
	$(BIN)/python -m ruff check src tests

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
