# Hatchway: `make run` and `make test` each work alone on a fresh machine
# (Python 3.11+, pip, make): they create .venv and install what they need.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: install run test lint typecheck unit bench clean thirdparty wheel

# pyproject.toml declares compatible ranges; constraints.txt pins what is tested.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/hatchway up --data-dir .hatchway

lint: install
	$(BIN)/ruff check hatchway tests bench
	$(BIN)/ruff format --check hatchway tests bench

typecheck: install
	$(BIN)/mypy

# Third-party protocol clients from the npm registry (when node/npm are available).
thirdparty: tests/thirdparty/node_modules/.installed

tests/thirdparty/node_modules/.installed: tests/thirdparty/package.json tests/thirdparty/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		cd tests/thirdparty && npm ci --no-audit --no-fund --silent && touch node_modules/.installed; \
	else echo "npm not found: the third-party client test will be skipped"; fi

unit: install thirdparty
	$(BIN)/pytest -q

test: lint typecheck unit

bench: install
	$(BIN)/pip install --quiet -c constraints.txt -e '.[bench]'
	$(BIN)/python bench/iam_decisions.py

# The wheel `pip install hatchway` / `pipx install hatchway` take (in dist/).
wheel: install
	$(BIN)/pip wheel --quiet --no-deps --wheel-dir dist .

clean:
	rm -rf dist build $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
