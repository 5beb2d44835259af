"""Shared fixtures: the test bed (tests/bed/fixtures.py) and the CRDs on its apiserver."""

from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.support.faultledger import print_fault_ledger

# The property tests check what the code returns, never how fast: hypothesis's wall-clock
# checks (a 200 ms deadline per example, "data generation is extremely slow") only measured
# the machine's load, and failed the URL properties on a busy 2-core CI runner.
settings.register_profile("voicevault", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("voicevault")

pytest_plugins = ["tests.bed.fixtures", "tests.bed.stack_fixtures", "tests.bed.realnode_fixtures"]


@pytest.fixture(scope="session")
def crds(kubeconfig: Path) -> None:
    """The voicevault CRDs applied (with the real kubectl) and Established."""
    from tests.support.kube import apply_crds

    apply_crds(kubeconfig)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep ``xdist_group`` working under ``--dist loadgroup`` with pytest 9.2.

    pytest-xdist 3.8 marks a grouped test by appending ``@group`` to ``item._nodeid``,
    which pytest 9.2 no longer reads (the id lives in ``item._id``): the groups were
    silently ignored and the real-node tests spread over both workers, each waiting for
    the one node the machine can hold.
    """
    if not getattr(config.option, "loadgroup", False):
        return
    try:
        from _pytest.nodeid import coerce_node_id
    except ImportError:  # pytest before 9.2: xdist's own suffix works
        return

    for item in items:
        names = sorted(
            {
                str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                for mark in item.iter_markers("xdist_group")
            }
        )
        if names and not item.nodeid.endswith(f"@{'_'.join(names)}"):
            item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(names)}")


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """The totals of the fault tier's ledger, once for the whole run."""
    print_fault_ledger(terminalreporter, config)
