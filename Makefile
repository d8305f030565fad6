# Two commands on a fresh machine:  `make sample` (the main job)  and  `make test`.
# Both create .venv and install what they need; later calls reuse it.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXTRAS ?= all
STAMP := $(VENV)/.installed-$(EXTRAS)

.PHONY: install test lint sample train clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

install: $(STAMP)

## test: lint, then the whole test suite
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

## sample: 16 images from the shipped diffusion weights (DDIM, 100 steps) -> out/grid.png
SAMPLE_ARGS ?= --n 16 --steps 100 --class-label all --guidance-scale 2 --out out/grid.png
sample: $(STAMP)
	$(PY) -m diffusion_worker.sample $(SAMPLE_ARGS)

## train: train the diffusion model (see README for the flags)
TRAIN_ARGS ?= --epochs 50 --batch-size 128
train: $(STAMP)
	$(PY) -m training.train_diffusion $(TRAIN_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
