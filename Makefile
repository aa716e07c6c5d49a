# `make demo` and `make test` each bootstrap .venv on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.invlab-installed

.PHONY: demo test test-all setup lint format bench gpu-check clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

demo: setup  ## train the default config and print accuracy + invariance tables
	$(VENV)/bin/invlab fit configs/default.yaml --overwrite

test: setup  ## the fast test suite (CPU)
	$(PY) -m pytest -q

test-all: setup  ## including tests marked slow
	$(PY) -m pytest -q -m ""

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: setup  ## every benchmark, side by side; writes benchmarks/RESULTS.md
	$(PY) benchmarks/run_all.py

gpu-check: setup  ## on a CUDA GPU (<= 8 min): CUDA tests, demo, throughput; writes benchmarks/RESULTS-gpu.md
	$(PY) benchmarks/gpu_check.py

clean:
	rm -rf runs .pytest_cache
