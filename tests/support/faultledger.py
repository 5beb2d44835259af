"""The fault tier's ledger: each test appends the faults it injected to one file in the
base temp folder that every xdist worker shares; the run's totals are printed at the end."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

LEDGER = "fault-ledger.jsonl"


class FaultLedger:
    def __init__(self, path: Path, test: str) -> None:
        self.path = path
        self.test = test
        self.counts: Counter[str] = Counter()
        self.recordings = 0  # recordings the test drove through its faults

    def add(self, kind: str, count: int = 1) -> None:
        self.counts[kind] += count

    def flush(self) -> None:
        with self.path.open("a") as out:
            out.write(
                json.dumps(
                    {"test": self.test, "faults": dict(self.counts), "recordings": self.recordings}
                )
                + "\n"
            )


def ledger_path(factory: pytest.TempPathFactory) -> Path:
    # the base temp of one xdist worker is <root>/popen-gwN; the root is shared
    base = factory.getbasetemp()
    root = base.parent if base.name.startswith("popen-gw") else base
    return root / LEDGER


def print_fault_ledger(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    factory = getattr(config, "_tmp_path_factory", None)
    if factory is None:
        return
    path = ledger_path(factory)
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
