# sse-sidecar image: a slim, non-root Python 3.11 runtime holding only a
# virtualenv with the package installed. Build from the repository root:
#
#   docker build -t sse-sidecar:0.1.0 .
#   docker run --rm -p 8080:8080 -p 9090:9090 \
#     -v "$PWD/my-sidecar.yaml:/etc/sse-sidecar/sidecar.yaml:ro" sse-sidecar:0.1.0
#
# The config file is read from /etc/sse-sidecar/sidecar.yaml (SSE_SIDECAR_CONFIG);
# mount your own file (or a ConfigMap directory) there. Any key can also be set
# from the environment: SSE_SIDECAR_ROUTES__CHAT__UPSTREAM=http://backend:8000.

# Both stages must use the same base image: the venv's python is a symlink to
# the base image's interpreter. Pin a digest (python:3.11-slim@sha256:...) for
# reproducible builds.
ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: resolve and install everything into /opt/venv ----------------------
FROM ${PYTHON_IMAGE} AS builder

# Bytecode is written here on purpose (pip compiles on install): the final root
# filesystem may be read-only, so it could not be written there at run time.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Every dependency (aiohttp, uvloop, yarl, multidict, ...) ships manylinux wheels
# for CPython 3.11 on amd64 and arm64, so no compiler is needed. Should a
# platform lack a wheel, install build-essential here: it stays in this stage.
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# Dependencies first, read from pyproject.toml with the stdlib's tomllib, so
# that a change to the code alone does not reinstall them (layer cache).
COPY pyproject.toml ./
RUN python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
print("\n".join(p["dependencies"] + p["optional-dependencies"]["speed"]))' > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt

# Then the package itself (not editable: the final stage copies only the venv).
COPY . ./
# DL3013 (pin versions) does not apply: this is the local package, and its
# dependencies came in above from pyproject's ranges.
# hadolint ignore=DL3013
RUN pip install --no-deps ".[speed]" \
 && pip check \
 && python -c "import sidecar.cli"

# --- final: the runtime only -----------------------------------------------------
FROM ${PYTHON_IMAGE}

# A fixed, unprivileged uid/gid matching the Helm chart's runAsUser, with no
# home and no login shell.
RUN groupadd --system --gid 10001 sse-sidecar \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin sse-sidecar

# Root-owned and so read-only for the runtime user.
COPY --from=builder /opt/venv /opt/venv
# Default config; the documented mount path for your own.
COPY config/sidecar.yaml /etc/sse-sidecar/sidecar.yaml

# PYTHONDONTWRITEBYTECODE: the root filesystem may be read-only (Kubernetes
# readOnlyRootFilesystem). PYTHONUNBUFFERED: log lines leave at once.
# The two hosts are overrides of the config file: inside a container the
# ports must be reachable from outside its network namespace.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SSE_SIDECAR_LISTEN__HOST=0.0.0.0 \
    SSE_SIDECAR_ADMIN__HOST=0.0.0.0 \
    SSE_SIDECAR_CONFIG=/etc/sse-sidecar/sidecar.yaml

USER 10001:10001

# 8080: client streams (listen.port). 9090: admin /healthz /readyz /metrics (admin.port).
EXPOSE 8080 9090

# slim has no curl: python's urllib does it (-I: isolated mode, no
# cwd or PYTHON* variables on the path). /healthz needs no admin token.
# Any non-2xx or a refused connection raises, so the exit status is 1. The port
# follows SSE_SIDECAR_ADMIN__PORT when the admin port is moved by environment.
HEALTHCHECK --interval=15s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-I", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SSE_SIDECAR_ADMIN__PORT', '9090'), timeout=2)"]

# SIGTERM starts the drain: readiness goes false, running streams may finish
# within drain_timeout, then get error/shutdown; the process exits 0. Give the
# container more than drain_timeout to stop (docker stop -t 20, Kubernetes
# terminationGracePeriodSeconds). Runs as PID 1 with no init: use
# `docker run --init` when running more than one worker process.
STOPSIGNAL SIGTERM

ENTRYPOINT ["sse-sidecar"]
