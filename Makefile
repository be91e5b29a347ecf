# Two commands on a fresh clone (each installs what is missing first, through scripts/setup.sh):
#   make run    the main job: MiniLM fine-tuned on RTE, offline (real pretrained encoder, real data; ~10 min on 2 cores)
#   make test   the linter (ruff) and the test suite
# REPRO_DATA_DIR defaults to ../shared/data beside this checkout when unset; the run is offline unless the
# HF_* variables are set otherwise. Extra arguments: make run ARGS="force=true seed=1", make test ARGS="-x tests/data".
# When the main job's record is already there (it is committed), `make run` says `skipped` with its recorded score.
# W&B is off unless ARGS has wandb.enabled=true (WANDB_MODE from the environment then wins: repro/tracking.py).

REPRO_DATA_DIR ?= $(abspath ../shared/data)
HF_HUB_OFFLINE ?= 1
HF_DATASETS_OFFLINE ?= 1
TOKENIZERS_PARALLELISM ?= false
export REPRO_DATA_DIR HF_HUB_OFFLINE HF_DATASETS_OFFLINE TOKENIZERS_PARALLELISM

VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: setup run test
setup:
	VENV=$(VENV) bash scripts/setup.sh

run: setup
	$(PY) -m repro.run +table=glue model=minilm method=ft task=rte $(ARGS)

test: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	$(PY) -m pytest $(ARGS)
