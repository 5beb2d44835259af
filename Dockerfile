# syntax=docker/dockerfile:1
# One small image for the operator and the uploader pods:
#   docker build -t ghcr.io/voicevault/voicevault:0.1.0 .
# The operator runs `voicevault operator` (the default command); the operator starts
# uploader pods with `voicevault uploader ...` from the same image.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --- builder: the project wheel, then the locked wheels of its dependencies -----------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY . .
# Everything comes from the lock (requirements/, README "Reproducible installs"), each
# file checked against its hash: the build backend, then the wheel built with it (no
# isolated build fetching an unpinned setuptools), then the runtime wheels, never an sdist.
# `src/voicevault/{operator,uploader,crds}` are symlinks into the top-level folders; the
# build follows them, so the wheel holds voicevault.operator, .uploader and .crds.
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements/build.txt \
    && pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /dist . \
    && pip download --no-cache-dir --require-hashes --no-deps --only-binary=:all: \
       --dest /wheels -r requirements/runtime.txt \
    && cp requirements/runtime.txt /dist/

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
# The wheels come in through bind mounts: they never become a layer of this image. The
# locked set is installed hash-checked and offline, then voicevault on top of it, and
# `pip check` proves nothing is missing. pip, setuptools and wheel go afterwards:
# nothing installs packages at run time.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    --mount=type=bind,from=builder,source=/dist,target=/dist \
    pip install --no-cache-dir --no-index --find-links=/wheels --require-hashes --no-deps \
       -r /dist/runtime.txt \
    && pip install --no-cache-dir --no-index --no-deps /dist/voicevault-*.whl \
    && pip check \
    && pip uninstall --yes pip setuptools wheel \
    && voicevault --version
# Numeric, so that Pod Security runAsNonRoot can verify it; the chart sets the same IDs.
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["voicevault"]
CMD ["operator"]
