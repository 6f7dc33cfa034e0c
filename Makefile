# The two commands in the README are `make run` and `make test`.
# Both bootstrap what they need: a virtualenv in .venv, the package with its
# test extra, and socket.io-client from npm (package-lock.json).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean deps

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --disable-pip-version-check -q -e '.[test]'
	touch $(STAMP)

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error

deps: $(STAMP) node_modules/.package-lock.json

run: deps
	$(BIN)/chatsock serve

test: deps
	bash scripts/system-deps.sh
	$(BIN)/ruff check chatsock tests
	$(BIN)/mypy
	$(BIN)/pytest

lint: deps
	$(BIN)/ruff check chatsock tests
	$(BIN)/mypy

bench: deps
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) node_modules
