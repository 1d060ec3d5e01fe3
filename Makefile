# Bootstraps a virtual environment in .venv with python3, then runs the job or the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench clean

$(STAMP): pyproject.toml deploy/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]' --constraint deploy/constraints.txt
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/astrodask demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_detect.py

clean:
	rm -rf $(VENV) astrodask-demo .pytest_cache
