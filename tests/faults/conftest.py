"""The fault tier: a ledger of injected faults, and the invariants every test checks.

Each test records the faults it injected; at the end of the run the totals by kind are
printed (all xdist workers write into the shared base temp folder).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

LEDGER = "fault-ledger.jsonl"


class FaultLedger:
    def __init__(self, path: Path, test: str) -> None:
        self.path = path
        self.test = test
        self.counts: Counter[str] = Counter()

    def add(self, kind: str, count: int = 1) -> None:
        self.counts[kind] += count

    def flush(self, recordings: int) -> None:
        with self.path.open("a") as out:
            out.write(
                json.dumps(
                    {"test": self.test, "faults": dict(self.counts), "recordings": recordings}
                )
                + "\n"
            )


def _ledger_path(factory: pytest.TempPathFactory) -> Path:
    # the base temp of one xdist worker is <root>/popen-gwN; the root is shared
    base = factory.getbasetemp()
    root = base.parent if base.name.startswith("popen-gw") else base
    return root / LEDGER


@pytest.fixture
def ledger(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[FaultLedger]:
    book = FaultLedger(_ledger_path(tmp_path_factory), request.node.name)
    book.recordings = 0  # type: ignore[attr-defined]
    yield book
    book.flush(getattr(book, "recordings", 0))


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    factory = getattr(config, "_tmp_path_factory", None)
    if factory is None:
        return
    path = _ledger_path(factory)
    if not path.exists():
        return
    faults: Counter[str] = Counter()
    recordings = 0
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        faults.update(entry["faults"])
        recordings += entry["recordings"]
    terminalreporter.section("faults injected")
    for kind, count in sorted(faults.items()):
        terminalreporter.write_line(f"{count:6d}  {kind}")
    terminalreporter.write_line(f"{recordings:6d}  recordings driven through them")
