# `make demo` and `make test` each create (or refresh, when pyproject.toml changes) .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# MGCN (text + audio item features) against LightGCN on Last.fm-2K, <= 30 epochs each, one thread:
# about 1 minute on a 2-core machine (54 s on 2026-12-05, beside two other CPU-bound processes).
demo: $(STAMP)
	$(BIN)/prismrec demo --dataset lfm2k --models mgcn,lightgcn --out runs/demo

# Two test processes (pytest-xdist): the suite is ~14 min in one process on a 2-core machine.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

clean:
	rm -rf $(VENV) runs .pytest_cache
