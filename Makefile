# The two commands a newcomer needs:
#   make demo   set up everything and run the whole loop once on a local stack
#   make test   run the test suite (what CI runs)
#   make unit   only the unit tier: pure logic, no binaries, no servers
#   make demo-cluster  the demo's journey on a real one-node cluster (root; builds images)
# Binaries (kube-apiserver, etcd, kubectl, helm, MinIO) are built or fetched once into
# ~/.cache/voicevault (override with VOICEVAULT_CACHE); later runs start in seconds.
# demo and up build only what the local stack runs (no MinIO: its S3 is moto).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Every install comes from the hash-pinned lock in requirements/ (README, "Reproducible
# installs"); `make lock` refreshes it. The stamp's name carries the inputs' checksum.
LOCK := requirements/lock.txt
LOCK_INPUTS := pyproject.toml $(LOCK) requirements/uv.txt
STAMP := $(VENV)/.installed-$(shell cat $(LOCK_INPUTS) | cksum | cut -d' ' -f1)
UV := $(BIN)/uv
# uv installs only from PyPI: wheels (no source builds) and never a Python of its own.
export UV_PYTHON_DOWNLOADS := never
FLOOR_VENV := .venv-floor
FLOOR_STAMP := $(FLOOR_VENV)/.installed-$(shell cat pyproject.toml requirements/floor.txt | cksum | cut -d' ' -f1)
PYTEST_WORKERS ?= 2
STACK_BINARIES := etcd kubectl helm kube-apiserver

.PHONY: demo demo-cluster images up test test-floor unit lint typecheck binaries bench lock clean

# pip brings uv (hash-checked), uv makes the venv exactly the lock (extra packages go),
# then the project itself, built with the locked setuptools.
$(STAMP): $(LOCK_INPUTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r requirements/uv.txt
	$(UV) pip sync --quiet --python $(BIN)/python --require-hashes --no-build $(LOCK)
	$(UV) pip install --quiet --python $(BIN)/python --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-*
	touch $@

# The declared minimum of every direct dependency (requirements/floor.txt), apart.
$(FLOOR_STAMP): pyproject.toml requirements/floor.txt | $(STAMP)
	rm -rf $(FLOOR_VENV)
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(UV) pip sync --quiet --python $(FLOOR_VENV)/bin/python --require-hashes --no-build \
		requirements/floor.txt
	$(UV) pip install --quiet --python $(FLOOR_VENV)/bin/python --no-deps --no-build-isolation -e .
	touch $@

# Refresh the lock: `make lock` follows pyproject.toml and keeps every other pin;
# `make lock LOCK_ARGS=--upgrade` takes the newest versions in range,
# `make lock LOCK_ARGS="--upgrade-package moto"` one package's.
UV_COMPILE = $(UV) pip compile --quiet --universal --python-version 3.11 --generate-hashes --no-build \
	--custom-compile-command 'make lock'
lock: $(STAMP)
	$(UV_COMPILE) $(LOCK_ARGS) pyproject.toml requirements/build.in --extra test -o $(LOCK)
	$(UV_COMPILE) pyproject.toml -c $(LOCK) -o requirements/runtime.txt
	$(UV_COMPILE) requirements/build.in -c $(LOCK) -o requirements/build.txt
	echo uv | $(UV_COMPILE) - -c $(LOCK) -o requirements/uv.txt
	$(UV_COMPILE) $(LOCK_ARGS) --resolution lowest-direct pyproject.toml requirements/build.in \
		--extra test -o requirements/floor.txt

binaries: $(STAMP)
	$(BIN)/python -m tests.bed.binaries

demo: $(STAMP)
	$(BIN)/python -m tests.bed.binaries --only $(STACK_BINARIES)
	$(BIN)/python -m tests.bed demo

demo-cluster: binaries images
	$(BIN)/python -m tests.bed demo-cluster

images: $(STAMP)
	$(BIN)/python -m tests.bed.images

up: $(STAMP)
	$(BIN)/python -m tests.bed.binaries --only $(STACK_BINARIES)
	$(BIN)/python -m tests.bed up

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q -n $(PYTEST_WORKERS)

test: binaries images lint typecheck
	$(BIN)/voicevault crds --check crds charts/voicevault/crds
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadgroup -q

# The unit and S3 tiers (and the Secret metadata watch) on the declared floors.
test-floor: binaries $(FLOOR_STAMP)
	$(FLOOR_VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadgroup -q tests/unit tests/s3 \
		tests/kube/test_secretwatch.py

bench: binaries
	$(BIN)/python bench/upload.py

clean:
	rm -rf $(VENV) $(FLOOR_VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
