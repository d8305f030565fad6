# Two commands on a fresh machine:  `make up` (the service)  and  `make test`.
# Both create .venv and install what they need; later calls reuse it.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXTRAS ?= all
STAMP := $(VENV)/.installed-$(EXTRAS)

.PHONY: install up test lint sample train train-continue train-ebm train-ebm-continue bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

install: $(STAMP)

## up: Redis, the gateway on :8000, the text service on :8001 and the workers; Ctrl-C stops all.
## Scale with `make up DIFFUSION_WORKERS=3 EBM_WORKERS=2`; with REDIS_URL set, use that Redis instead.
DIFFUSION_WORKERS ?= 1
EBM_WORKERS ?= 1
UP_PROCESSES := $(if $(REDIS_URL),gateway text diffusion ebm,)
up: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/honcho start -f Procfile \
		-c diffusion=$(DIFFUSION_WORKERS),ebm=$(EBM_WORKERS) $(UP_PROCESSES)

## test: lint, then the whole test suite
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

## sample: 20 images, two per class, from the shipped diffusion weights with the card's recommended sampler -> out/grid.png
SAMPLE_ARGS ?= --n 20 --class-label all --out out/grid.png
sample: $(STAMP)
	$(PY) -m diffusion_worker.sample $(SAMPLE_ARGS)

## train / train-ebm: train the models (see README for the flags)
TRAIN_ARGS ?= --epochs 50 --batch-size 128
train: $(STAMP)
	$(PY) -m training.train_diffusion $(TRAIN_ARGS)

## train-continue: the standing diffusion run (training/continue_diffusion.py) in the background on one
## thread: resumes its state from ~/.cache/genservice/diffusion-standing (else warm-starts from models/diffusion),
## probes every 30 core-minutes, exports only better weights. Log: runs/train-continue.log; stop: kill the pid.
TRAIN_CONTINUE_ARGS ?= --max-minutes 170
train-continue: $(STAMP)
	mkdir -p runs
	OMP_NUM_THREADS=1 nohup $(PY) -m training.continue_diffusion $(TRAIN_CONTINUE_ARGS) >runs/train-continue.log 2>&1 & \
		echo $$! >runs/train-continue.pid
	@echo "standing run started: pid $$(cat runs/train-continue.pid), log runs/train-continue.log," \
		"stop with: kill $$(cat runs/train-continue.pid)  (it checkpoints first)"

EBM_TRAIN_ARGS ?= --epochs 30 --batch-size 64
train-ebm: $(STAMP)
	$(PY) -m training.train_ebm $(EBM_TRAIN_ARGS)

## train-ebm-continue: the EBM's standing run (recovery likelihood, training/train_ebm_recovery.py) in the
## background on one thread: resumes its state from ~/.cache/genservice/ebm-standing, else warm-starts from
## models/ebm (from scratch if that is a persistent-CD energy); checkpoints every 5 minutes and on kill; every
## 30 core-minutes it scores the served chain (N = 500) into models/ebm/history.jsonl and exports to models/ebm
## only weights that beat the shipped ones (lower FID, agreement and worst-class diversity within noise).
## Log: runs/train-ebm-continue.log; stop: kill the pid.
EBM_STATE ?= $(HOME)/.cache/genservice/ebm-standing
EBM_EXPORT ?= models/ebm
EBM_CONTINUE_ARGS ?= --max-minutes 170
train-ebm-continue: $(STAMP)
	mkdir -p runs
	if [ -f "$(EBM_STATE)/checkpoint.pt" ]; then resume="$(EBM_STATE)"; \
	elif grep -q '"recipe": "recovery-likelihood"' models/ebm/config.json; then resume=models/ebm; else resume=; fi; \
	OMP_NUM_THREADS=1 nohup $(PY) -m training.train_ebm_recovery --threads 1 --device cpu --out "$(EBM_STATE)" \
		--export "$(EBM_EXPORT)" --export-if-better --probe-every-minutes 30 --history models/ebm/history.jsonl \
		--run-name standing $${resume:+--resume $$resume} $(EBM_CONTINUE_ARGS) >runs/train-ebm-continue.log 2>&1 & \
		echo $$! >runs/train-ebm-continue.pid
	@echo "EBM standing run started: pid $$(cat runs/train-ebm-continue.pid), log runs/train-ebm-continue.log"

## bench: the benchmark suite -> BENCHMARKS.md (+ bench/results/); `make bench BENCH_ARGS=--quick` for a short run
BENCH_ARGS ?=
bench:
	$(MAKE) install EXTRAS=bench
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
