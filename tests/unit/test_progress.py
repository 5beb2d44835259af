"""The terminal progress display of `voicevault upload`."""

from __future__ import annotations

import io

from voicevault.uploader.progress import (
    NoProgress,
    TerminalProgress,
    for_stream,
    format_eta,
    render,
)

MIB = 1 << 20


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_line_shows_percent_bytes_rate_and_eta() -> None:
    line = render(64 * MIB, 256 * MIB, 2.0)
    assert line == " 25%  64.0/256.0 MiB  32.0 MiB/s  ETA 0:06"
    assert render(0, 10, 0.0).endswith("ETA --:--")
    assert format_eta(3725) == "1:02:05"


def test_shown_on_a_terminal_and_ends_with_a_newline() -> None:
    out = Tty()
    progress = for_stream(out)
    assert isinstance(progress, TerminalProgress)
    progress.start(3 * MIB)
    for _ in range(3):
        progress.advance(MIB)
    text = out.getvalue()
    assert text.startswith("\r") and text.endswith("\n")
    assert "100%  3.0/3.0 MiB" in text


def test_silent_when_not_a_terminal() -> None:
    assert isinstance(for_stream(io.StringIO()), NoProgress)
