# Quick start: `make train` (train the tiny model on the embedded synthetic data) and
# `make test` (the whole test suite). Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
WORKDIR ?= workdirs/tiny

.PHONY: train test install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python setup.py
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

train: $(VENV)/.installed
	$(BIN)/python -m mm1_jax.train --config=experiments/tiny.py --workdir=$(WORKDIR)

# Two workers, whole files each: the two cores of the smallest machine the suite targets.
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests

clean:
	rm -rf $(VENV) workdirs
