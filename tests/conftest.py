"""Shared fixtures: the test bed (tests/bed/fixtures.py) and the CRDs on its apiserver."""

from pathlib import Path

import pytest

pytest_plugins = ["tests.bed.fixtures", "tests.bed.stack_fixtures"]


@pytest.fixture(scope="session")
def crds(kubeconfig: Path) -> None:
    """The voicevault CRDs applied (with the real kubectl) and Established."""
    from tests.support.kube import apply_crds

    apply_crds(kubeconfig)
