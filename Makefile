# `make run` and `make test` create the virtual environment and install the
# pinned dependencies on first use; later runs reuse them.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Touched after a successful install; reinstalls when the pins change.
INSTALLED := $(VENV)/.installed

# No model or data set may be fetched from a hub at run time.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install run test bench optimize-demo clean-data

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(INSTALLED): requirements.lock pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip setuptools
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(INSTALLED)

install: $(INSTALLED)

run: $(INSTALLED)
	$(BIN)/sluice up

test: $(INSTALLED)
	$(BIN)/python -m pytest

BENCH_INSTALLED := $(VENV)/.bench-installed

$(BENCH_INSTALLED): requirements-bench.lock $(INSTALLED)
	$(BIN)/pip install --quiet -r requirements-bench.lock
	touch $(BENCH_INSTALLED)

# Runs every benchmark in load_tests/ and writes docs/benchmarks.md; takes
# about 18 minutes on two cores (ten of them the memory run) and needs the
# machine to itself.
bench: $(BENCH_INSTALLED)
	$(BIN)/python -m load_tests.bench

# Runs the optimization demonstration of docs/optimization.md into
# data/optimize-demo, replacing an earlier run: the task dataset, LoRA
# fine-tuning, int8 and int4, an A/B experiment through the stack, and the cost
# model. Writes data/optimize-demo/summary.md. Took 8 minutes on two busy cores.
optimize-demo: $(INSTALLED)
	$(BIN)/sluice model demo --out data/optimize-demo --force

# Deletes the embedded stack's data folder: streams, Redis, ClickHouse and the development key.
clean-data:
	rm -rf data
