PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser demo test test-fast lint wheel-smoke lowest-direct clean

# The venv is rebuilt only when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian's Chromium for the served page's browser test (Playwright cannot download its own
# browser here). Best effort: without root or a package registry the browser test skips.
browser:
	@command -v chromium >/dev/null 2>&1 || \
	  { (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 || \
	    echo "chromium not installed: the browser test will be skipped"; }

demo: $(STAMP)
	$(BIN)/python -m medscope demo --out runs/demo --force

# Everything the tests write lives in the clone (.tmp/pytest is emptied at each start), not in
# a /tmp that other jobs share and fill.
test: $(STAMP) browser
	mkdir -p .tmp
	TMPDIR=$(CURDIR)/.tmp $(BIN)/python -m pytest -q --basetemp=$(CURDIR)/.tmp/pytest

# The wheel installed (not editable) into a fresh venv, run from outside the repository:
# `medscope demo --epochs 1`, `medscope run six-architectures --quick`, `medscope serve`.
wheel-smoke: $(STAMP)
	DEPS_VENV=$(CURDIR)/$(VENV) .ci/wheel-smoke

# The dependency floors: every direct dependency at the lowest version pyproject.toml allows
# (uv's --resolution lowest-direct; torch borrowed from .venv), then a smoke subset of the tests.
# Needs a package index and uv (`.venv/bin/pip install uv`); about 6 min on 2 cores.
lowest-direct: $(STAMP)
	DEPS_VENV=$(CURDIR)/$(VENV) .ci/lowest-direct

# Everyday work: every test not marked slow (under 3 minutes on 2 cores). `make test` and CI
# run the whole suite.
test-fast: $(STAMP)
	mkdir -p .tmp
	TMPDIR=$(CURDIR)/.tmp $(BIN)/python -m pytest -q -m "not slow" --basetemp=$(CURDIR)/.tmp/pytest-fast

# ruff, and the layer contract of docs/architecture.md (import-linter, declared in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports pyproject.toml

clean:
	rm -rf runs/demo .pytest_cache .tmp
