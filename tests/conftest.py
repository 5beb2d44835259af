"""Shared fixtures: the test bed (tests/bed/fixtures.py) and the CRDs on its apiserver."""

from pathlib import Path

import pytest

from tests.support.faultledger import print_fault_ledger

pytest_plugins = ["tests.bed.fixtures", "tests.bed.stack_fixtures", "tests.bed.realnode_fixtures"]


@pytest.fixture(scope="session")
def crds(kubeconfig: Path) -> None:
    """The voicevault CRDs applied (with the real kubectl) and Established."""
    from tests.support.kube import apply_crds

    apply_crds(kubeconfig)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """The totals of the fault tier's ledger, once for the whole run."""
    print_fault_ledger(terminalreporter, config)
