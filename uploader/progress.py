"""Upload progress: what an upload reports to, and the display for people (bytes, rate and
ETA on a terminal; nothing when not a terminal)."""

from __future__ import annotations

import threading
import time
from typing import Protocol, TextIO


class Progress(Protocol):
    """Receives progress; `advance` may be called from worker threads."""

    def start(self, total: int) -> None: ...

    def advance(self, done: int) -> None: ...


class NoProgress:
    def start(self, total: int) -> None:
        pass

    def advance(self, done: int) -> None:
        pass


MIB = 1 << 20


def format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def render(done: int, total: int, elapsed: float) -> str:
    """One status line, e.g. ' 42%  107.5/256.0 MiB  88.1 MiB/s  ETA 0:01'."""
    rate = done / elapsed if elapsed > 0 else 0.0
    percent = 100 * done // total if total else 100
    eta = format_eta((total - done) / rate) if rate > 0 else "--:--"
    return (
        f"{percent:3d}%  {done / MIB:.1f}/{total / MIB:.1f} MiB  {rate / MIB:.1f} MiB/s  ETA {eta}"
    )


class TerminalProgress:
    """Redraws one line at most `hz` times a second; thread-safe."""

    def __init__(self, stream: TextIO, hz: float = 10.0) -> None:
        self._stream = stream
        self._interval = 1.0 / hz
        self._lock = threading.Lock()
        self._done = 0
        self._total = 0
        self._started = 0.0
        self._last_draw = 0.0

    def start(self, total: int) -> None:
        with self._lock:
            self._total = total
            self._started = time.monotonic()

    def advance(self, done: int) -> None:
        with self._lock:
            self._done += done
            now = time.monotonic()
            if self._done < self._total and now - self._last_draw < self._interval:
                return
            self._last_draw = now
            line = render(self._done, self._total, now - self._started)
            self._stream.write("\r" + line)
            if self._done >= self._total:
                self._stream.write("\n")
            self._stream.flush()


def for_stream(stream: TextIO) -> Progress:
    """A terminal display when `stream` is a terminal, otherwise silence."""
    try:
        interactive = stream.isatty()
    except (AttributeError, ValueError):
        interactive = False
    return TerminalProgress(stream) if interactive else NoProgress()
