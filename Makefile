# Pass-through authentication: one command to run the stack, one to test it.
# `make up` and `make test` create/refresh the virtualenv first, so each works alone on a
# fresh Debian machine (server packages are apt-installed by the launcher when root).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
STATE ?= .stack

.PHONY: all up down status logs test unit lint typecheck bench clean venv

all: lint typecheck test

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || \
		{ echo "python3-venv missing: apt-get install -y python3-venv"; exit 1; }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

up: $(STAMP)
	$(BIN)/pta-stack up --state-dir $(STATE)

down: $(STAMP)
	$(BIN)/pta-stack down --state-dir $(STATE)

status: $(STAMP)
	$(BIN)/pta-stack status --state-dir $(STATE)

logs: $(STAMP)
	$(BIN)/pta-stack logs --state-dir $(STATE)

# The suite starts its own stack in a temporary state folder on free ports (never the one
# `make up` uses) and stops it at the end.
test: $(STAMP)
	$(BIN)/pytest -q

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Benchmarks (about 2-5 minutes; results in bench/results/): on the `make up` stack when
# it is running (its agents are stopped and restarted around the one-agent steps),
# otherwise on a private stack of their own.
bench: $(STAMP)
	@if $(BIN)/pta-stack status --state-dir $(STATE) >/dev/null 2>&1; then \
		$(BIN)/python -m bench.run --stack-json $(STATE)/stack.json $(BENCH_ARGS); \
	else \
		$(BIN)/python -m bench.run --own-stack $(BENCH_ARGS); \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
