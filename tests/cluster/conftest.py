"""On a failed journey, print what the node saw: pods, their states and logs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.bed.cluster_stack import ClusterStack


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report = yield
    if call.when == "call":
        item.stash[_FAILED] = bool(getattr(report, "failed", False))
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def _diagnose_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if request.node.stash.get(_FAILED, False) and "cluster" in request.fixturenames:
        cluster: ClusterStack = request.getfixturevalue("cluster")
        print(cluster.diagnose())
