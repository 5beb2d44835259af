"""Undo mounts a build or the real node left under some directories."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path


def unmount_under(prefixes: Sequence[Path]) -> None:
    """Unmount everything at or below ``prefixes``, deepest first (lazily if busy)."""
    out = subprocess.run(
        ["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True, check=False
    ).stdout
    targets = {
        t for t in out.splitlines() if any(t == str(p) or t.startswith(f"{p}/") for p in prefixes)
    }
    for target in sorted(targets, key=lambda t: (t.count("/"), len(t)), reverse=True):
        if subprocess.run(["umount", target], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", target], capture_output=True, check=False)
