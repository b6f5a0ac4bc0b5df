# Sidecache developer commands. Everything installs into ./.venv; nothing global but the
# Debian tools that `bench` and `docker-smoke` need (installed on first use).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
TORCH_INDEX   ?=

.PHONY: install run run-fake test test-servers node-deps lint bench clean

install: $(STAMP)

# torch's CPU build goes in first (TORCH_INDEX: another index to take it from, e.g.
# https://download.pytorch.org/whl/cpu; pip here finds it on this machine's disk): the semantic
# extra's range then accepts it instead of pulling a CUDA build of several GB.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e '.[test,lint,semantic,otel]'
	touch $(STAMP)

## Start Sidecache on its embedded defaults (memory cache) against UPSTREAM_BASE_URL.
run: install
	$(BIN)/sidecache serve

## Same, answering from the built-in fake upstream: no API key needed. The proxy port binds
## 127.0.0.1 only (`make run-fake PROXY_HOST=0.0.0.0` opens it).
run-fake: install
	$(BIN)/sidecache serve --upstream fake

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile
	$(BIN)/lint-imports --no-logo
	$(BIN)/vulture

test: lint test-servers node-deps
	$(BIN)/pytest -q
	$(BIN)/pytest -q browser_tests

## The tests start private Redis (a single node and a 6-node cluster, joined with redis-cli),
## PostgreSQL and Prometheus servers from these Debian packages'
## binaries (the packages' own services are not used), and drive the dashboard page in Debian's
## headless Chromium (no browser download).
test-servers:
	@command -v redis-server >/dev/null && command -v redis-cli >/dev/null && ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 \
	  && test -x /usr/lib/chromium/chromium && command -v ss >/dev/null \
	  && command -v prometheus >/dev/null \
	  || (apt-get update -qq \
	      && apt-get install -y -qq redis-server postgresql chromium iproute2 prometheus)

## The official openai npm package for tests/test_clients.py, pinned by tests/node/package-lock.json
## and installed under tests/node/node_modules (nothing global; needs the machine's Node >= 20).
NODE_STAMP := tests/node/node_modules/.package-lock.json
node-deps: $(NODE_STAMP)
$(NODE_STAMP): tests/node/package.json tests/node/package-lock.json
	@command -v npm >/dev/null || { echo "make node-deps: npm not found (install Node 20+)"; exit 1; }
	npm ci --prefix tests/node --no-audit --no-fund
	touch $(NODE_STAMP)

clean:
	rm -rf tests/node/node_modules $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .import_linter_cache

## Container image with podman, no Docker engine or registry needed (docs/design.md §9):
## deploy/podman/ makes a local python:3.11-slim base, then builds ./Dockerfile.
.PHONY: docker-image docker-image-semantic docker-smoke
docker-image:
	bash deploy/podman/build-image.sh

## The semantic variant (build argument SEMANTIC=1: torch's CPU build and the local embedder),
## tagged localhost/sidecache:semantic. Not part of CI: it adds about 1.4 GB and minutes.
docker-image-semantic:
	SIDECACHE_SEMANTIC=1 SIDECACHE_TORCH_VERSION=$(TORCH_VERSION) \
		$(if $(TORCH_INDEX),SIDECACHE_TORCH_INDEX=$(TORCH_INDEX)) bash deploy/podman/build-image.sh

## Build, run and probe the image: MISS then HIT through the openai SDK, /metrics, SIGTERM.
docker-smoke: install
	$(BIN)/python deploy/smoke.py

## Measure the sidecar with real load generators on loopback (installs Debian's wrk and hey once).
## BASELINE=REV also compares git revision REV's cache-hit path with the working tree's, same run.
BASELINE ?=
bench: install node-deps
	@command -v wrk >/dev/null && command -v hey >/dev/null || \
		{ apt-get update && apt-get install -y wrk hey; }
	$(BIN)/python -m bench.run $(if $(BASELINE),--baseline '$(BASELINE)')
