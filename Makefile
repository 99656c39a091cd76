# Kestrel: the two commands a fresh machine needs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DAYS ?= 3

.PHONY: install demo test test-unit lint typecheck bench clean down

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

down: $(STAMP)
	$(BIN)/kestrel down

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
