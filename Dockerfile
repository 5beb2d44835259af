# syntax=docker/dockerfile:1
# One small image for the operator and the uploader pods:
#   docker build -t ghcr.io/voicevault/voicevault:0.1.0 .
# The operator runs `voicevault operator` (the default command); the operator starts
# uploader pods with `voicevault uploader ...` from the same image.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --- builder: the project wheel, then wheels of all its dependencies -------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY . .
# `src/voicevault/{operator,uploader,crds}` are symlinks into the top-level folders; the
# build follows them, so the wheel holds voicevault.operator, .uploader and .crds.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist . \
    && pip wheel --no-cache-dir --wheel-dir /wheels /dist/voicevault-*.whl

# --- final: the wheels installed, no sources, no build tools, no pip caches ------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="voicevault" \
      org.opencontainers.image.description="Store call recordings, encrypted, in each account's own S3 bucket" \
      org.opencontainers.image.licenses="Apache-2.0"
# MALLOC_ARENA_MAX=2: with a glibc arena per thread (the operator's API call pool, the
# uploader's part workers) freed memory fragments and RSS creeps up for hours; two
# arenas keep the operator flat (BENCHMARKS.md, soak).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MALLOC_ARENA_MAX=2
# The wheels come in through a bind mount: they never become a layer of this image.
# pip, setuptools and wheel go afterwards: nothing installs packages at run time.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/voicevault-*.whl \
    && pip uninstall --yes pip setuptools wheel \
    && voicevault --version
# Numeric, so that Pod Security runAsNonRoot can verify it; the chart sets the same IDs.
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["voicevault"]
CMD ["operator"]
