# The two commands in the README are `make run` and `make test`.
# Both bootstrap what they need: a virtualenv in .venv with the exact versions
# of requirements.lock (runtime and test dependencies), the package itself, and
# socket.io-client from npm (package-lock.json).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
PIP := $(BIN)/pip install --disable-pip-version-check -q
# pip-tools, in a venv of its own, only for `make lock`.
LOCK_TOOLS := $(VENV)/lock-tools
PIP_TOOLS := pip-tools==7.6.2

.PHONY: run test lint bench clean deps lock

$(BIN)/python:
	$(PY) -m venv $(VENV)

# What CI tests is what the lock says: every dependency at its pinned version,
# then chatsock itself without resolving anything more.
$(STAMP): $(BIN)/python pyproject.toml $(LOCK)
	$(PIP) -r $(LOCK)
	$(PIP) --no-deps -e .
	touch $(STAMP)

# Regenerate requirements.lock after changing pyproject.toml's dependencies:
# pins that still fit are kept. `make lock UPGRADE=1` moves every pin to the
# newest release. Then `make test` installs and tests the new lock.
lock:
	test -x $(LOCK_TOOLS)/bin/pip-compile || \
		{ $(PY) -m venv $(LOCK_TOOLS) && $(LOCK_TOOLS)/bin/pip install -q $(PIP_TOOLS); }
	CUSTOM_COMPILE_COMMAND='make lock' $(LOCK_TOOLS)/bin/pip-compile --quiet \
		--extra test --strip-extras --no-emit-index-url --no-emit-find-links \
		$(if $(UPGRADE),--upgrade) --output-file $(LOCK) pyproject.toml

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error

# chatsock-client (clients/js): its npm dependencies, then its build (tsc to dist/).
JS_CLIENT := clients/js
$(JS_CLIENT)/node_modules/.package-lock.json: $(JS_CLIENT)/package.json $(JS_CLIENT)/package-lock.json
	cd $(JS_CLIENT) && npm ci --no-audit --no-fund --loglevel=error --ignore-scripts

$(JS_CLIENT)/dist/index.js: $(JS_CLIENT)/node_modules/.package-lock.json $(JS_CLIENT)/tsconfig*.json $(wildcard $(JS_CLIENT)/src/*.ts $(JS_CLIENT)/test/components/*)
	cd $(JS_CLIENT) && npm run --silent build && npm run --silent build:tests
	touch $@

# The page at / (chatsock/static/page/*.js), bundled by esbuild with chatsock-client,
# marked, DOMPurify and highlight.js into chatsock/static/dist/ (git-ignored).
PAGE := chatsock/static/dist/page.js
$(PAGE): node_modules/.package-lock.json $(JS_CLIENT)/dist/index.js scripts/build_page.mjs $(wildcard chatsock/static/page/*.js)
	node scripts/build_page.mjs

deps: $(STAMP) node_modules/.package-lock.json $(JS_CLIENT)/dist/index.js $(PAGE)

run: deps
	$(BIN)/chatsock serve

test: deps
	bash scripts/system-deps.sh
	$(BIN)/ruff check chatsock tests bench
	$(BIN)/mypy
	# Three processes on two cores: much of the suite waits (paced tokens, workers,
	# node and Chromium), so a third keeps the CPU busy: 13 min 5 s -> 9 min 53 s here.
	$(BIN)/pytest -n 3

lint: deps
	$(BIN)/ruff check chatsock tests bench
	$(BIN)/mypy

bench: deps
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) node_modules $(JS_CLIENT)/node_modules $(JS_CLIENT)/dist $(JS_CLIENT)/test-dist chatsock/static/dist
