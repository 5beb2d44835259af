"""The fault tier: a ledger of injected faults (tests/support/faultledger.py), and the
invariants every test checks. The run's totals are printed by tests/conftest.py: the
xdist controller collects nothing, so it never loads this file."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.faultledger import FaultLedger, ledger_path


@pytest.fixture
def ledger(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[FaultLedger]:
    book = FaultLedger(ledger_path(tmp_path_factory), request.node.name)
    yield book
    book.flush()
