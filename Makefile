# Kestrel: the two commands a fresh machine needs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DAYS ?= 3
# Kestrel runs as production unless told otherwise (secrets required, `kestrel token` off);
# the demo and the test suite are a laptop: development mode, secrets generated under var/.
export KESTREL_ENV ?= dev

.PHONY: install demo test test-unit lint typecheck bench clean down dagster

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

## demo: start the local services, stream simulated days through ingest and the archiver
demo: $(STAMP)
	$(BIN)/kestrel up
	$(BIN)/kestrel demo --days $(DEMO_DAYS)

## test: every test, unit and integration (they start their own broker and Redis)
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

test-unit: $(STAMP)
	$(BIN)/python -m pytest -m "not integration and not spark and not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/kestrel bench ingest

## dagster: the Dagster UI on http://127.0.0.1:$(DAGSTER_PORT) (asset graph, checks, schedules, sensor)
DAGSTER_PORT ?= 3001
dagster: $(STAMP)
	@mkdir -p var/dagster
	DAGSTER_HOME=$(abspath var/dagster) $(BIN)/dagster dev -m dagster_project.definitions \
		-h 127.0.0.1 -p $(DAGSTER_PORT)

down: $(STAMP)
	$(BIN)/kestrel down

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
