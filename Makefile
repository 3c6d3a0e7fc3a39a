# Hatchway: `make run` and `make test` each work alone on a fresh machine
# (Python 3.11+, pip, make): they create .venv and install what they need.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: install run test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/hatchway up --data-dir .hatchway

lint: install
	$(BIN)/ruff check hatchway tests bench
	$(BIN)/ruff format --check hatchway tests bench

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -q

test: lint typecheck unit

bench: install
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/iam_decisions.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
