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
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_WORKERS ?= 2
STACK_BINARIES := etcd kubectl helm kube-apiserver

.PHONY: demo demo-cluster images up test unit lint typecheck binaries bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

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

bench: binaries
	$(BIN)/python bench/upload.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
