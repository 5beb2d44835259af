"""Replace a file all at once: never a half-written file under its name, even on a crash."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def replacing(
    target: Path, *, prefix: str, suffix: str, mode: int | None = None
) -> Iterator[BinaryIO]:
    """A temporary file beside `target`; when the block ends without an error it is
    flushed to disk (fsync) and renamed over `target`, otherwise removed.

    `mode` (e.g. 0o600) is set before anything is written.
    """
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=prefix, suffix=suffix)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
