# Sidecache developer commands. Everything installs into ./.venv; nothing global but the
# Debian tools that `bench` and `docker-smoke` need (installed on first use).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run run-fake test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,lint]'
	touch $(STAMP)

## Start Sidecache on its embedded defaults (memory cache) against UPSTREAM_BASE_URL.
run: install
	$(BIN)/sidecache serve

## Same, answering from the built-in fake upstream: no API key needed.
run-fake: install
	$(BIN)/sidecache serve --upstream fake

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

test: lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache
