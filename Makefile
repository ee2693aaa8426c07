# blindkey: `make run` starts the proxy on 127.0.0.1:8765 (`make run PORT=9000` elsewhere),
# `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,mcp]'
	touch $(STAMP)

run: setup
	$(BIN)/blindkey init
	$(BIN)/blindkey proxy start --foreground $(if $(PORT),--port $(PORT))

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	mkdir -p $(VENV)/typecheck/blindkey
	for p in proxy broker audit config redact cli service ui; do ln -sfn ../../../$$p $(VENV)/typecheck/blindkey/$$p; done
	$(BIN)/mypy
	# The packages by path too (as folders, not as blindkey.*): an import cycle between
	# modules shows up there as two incompatible copies of one class.
	$(BIN)/mypy proxy broker audit config redact cli service ui

# wrk, nginx and curl come from apt-get when missing, py-spy from pip; BENCH_ARGS=--quick
# for a one-minute smoke run. Results: bench/results/bench-<UTC time>.{json,md}.
bench: setup
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
