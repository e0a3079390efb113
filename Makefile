PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test venv clean bench

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

## make up: the whole suite locally (embedded NATS, every service, a demo app); Ctrl-C stops it
up: $(STAMP)
	$(BIN)/flotilla up --demo

## make test: the whole test suite against real nats-server processes
test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

bench: $(STAMP)
	$(BIN)/python benchmarks/api.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
