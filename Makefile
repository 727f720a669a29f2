# The README's commands. Each target creates .venv when it is missing.
PY      ?= python3
VENV    ?= .venv
BIN      = $(VENV)/bin
CONFIG  ?= quickstart
DATA    ?= cifar10
ARGS    ?=
# pytest-xdist: worksteal keeps both cores busy to the end (2-core CI: 3 min 40 s, against 5 min 50 s in one process)
PARALLEL ?= -n auto --maxprocesses 4 --dist worksteal

.PHONY: setup run test test-fast lint bench clean

$(BIN)/simclr: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev,timm]'
	touch $(BIN)/simclr

setup: $(BIN)/simclr

## run: pretrain, evaluate and report (CIFAR-10 by default; DATA=path/to/folder for your own images)
run: setup
	$(BIN)/simclr run --config $(CONFIG) --data $(DATA) $(ARGS)

## test: the whole test suite (no network, no ../shared needed), one worker a core (at most 4), one thread a worker
test: setup
	$(BIN)/python -m pytest tests $(PARALLEL)

## test-fast: the edit-test loop: every test but those marked slow (torchrun launches, SIGKILLs, gpu.sh, the wheel)
test-fast: setup
	$(BIN)/python -m pytest tests -m "not slow" $(PARALLEL)

lint: setup
	$(BIN)/ruff check src tests benchmarks

bench: setup
	$(BIN)/simclr bench

clean:
	rm -rf $(VENV) build src/*.egg-info
