"""py-spy on a running process during a benchmark window, and what its samples say.

``py-spy record --format raw`` writes collapsed stacks (``frame;frame;... count``), root
first. With ``--gil`` only the thread holding the GIL is sampled: a thread blocked on a
socket has let the GIL go. A thread that holds the GIL but waits for a core is sampled
too, so on a busy machine samples / rate overstates CPU: the report takes each
function's share of the samples times the operator's CPU measured from /proc.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

RATE = 50  # samples a second: py-spy itself then costs little of the 2 shared cores


def py_spy() -> str:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else "py-spy"


class Recorder:
    """``py-spy record`` of ``pid`` from ``start()`` until ``stop()``."""

    def __init__(self, pid: int, out: Path, rate: int = RATE) -> None:
        self.out = out
        self.argv = [
            py_spy(),
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--nonblocking",  # never pause the operator
            "--gil",
            "--full-filenames",
            "--output",
            str(out),
        ]
        self.rate = rate
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Recorder:
        log = self.out.with_suffix(".log").open("wb")
        self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
        return self

    @property
    def pid(self) -> int:
        return self.process.pid if self.process else 0

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGINT)  # it writes the profile and exits
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    """``func (path/to/module.py:12)`` as ``module.py:func``; the line is dropped."""
    match = _FRAME.match(frame)
    if not match:
        return frame
    file = match.group("file")
    parts = Path(file).parts
    if "site-packages" in parts:  # a library: its package path
        file = "/".join(parts[len(parts) - parts[::-1].index("site-packages") :])
    elif any(p.startswith("python3") for p in parts[:-1]):  # the standard library
        index = max(i for i, p in enumerate(parts[:-1]) if p.startswith("python3"))
        file = "/".join(parts[index + 1 :])
    elif len(parts) > 1:  # the project: folder and module
        file = "/".join(parts[-2:])
    return f"{file}:{match.group('func')}"


# frames every stack of a thread or of the event loop passes through: no information
GENERIC = (
    "threading.py:",
    "concurrent/futures/thread.py:",
    "asyncio/base_events.py:",
    "asyncio/runners.py:",
    "asyncio/events.py:",
    "<frozen runpy>:",
    "voicevault/__main__.py:",
    "voicevault/cli.py:",
    "operator/command.py:run",
    "kopf/_core/reactor/running.py:run",
)


def package(name: str) -> str:
    """The package (or standard-library module) a frame name belongs to."""
    head = name.split(":", 1)[0]
    return head.split("/", 1)[0].removesuffix(".py")


@dataclass(frozen=True)
class Profile:
    samples: int
    rate: int
    inclusive: Counter[str]  # samples with the function anywhere on the stack
    own: Counter[str]  # samples with the function on top

    def seconds(self, samples: int) -> float:
        return samples / self.rate

    def telling(self, top: int) -> list[tuple[str, int]]:
        """The costliest functions, inclusive, without the frames every stack has."""
        return [
            (name, count)
            for name, count in self.inclusive.most_common()
            if not name.startswith(GENERIC)
        ][:top]

    def by_package(self) -> list[tuple[str, int]]:
        """Own time summed by package: where the CPU goes, by library."""
        totals: Counter[str] = Counter()
        for name, count in self.own.items():
            totals[package(name)] += count
        return totals.most_common()


def parse_raw(text: str, rate: int) -> Profile:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    return Profile(total, rate, inclusive, own)
