# Two commands for a fresh machine: `make demo` (set up, then run the main job on the bundled
# example: tiny model, CPU) and `make test` (set up, then run the tests).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
RUNS ?= runs
DEMO_FLAGS := --base-model tiny --device cpu --resolution 64 --train-steps 30 --num-samples 8 --sample-steps 20

.PHONY: setup demo test
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/realfill example $(RUNS)/example-scenes
	$(BIN)/realfill run $(RUNS)/example-scenes --out $(RUNS)/example $(DEMO_FLAGS)
	$(BIN)/realfill eval $(RUNS)/example --quiet

test: setup
	$(BIN)/ruff check realfill pipeline jobs tests benchmarks
	$(BIN)/python -m pytest
