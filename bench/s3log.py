"""S3 requests by method and operation, from moto's request log (one line per request)."""

from __future__ import annotations

import re
from pathlib import Path

_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<code>\d{3})')


def log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def requests_since(path: Path, offset: int) -> dict[str, int]:
    """``"PUT PutObject 200"``-style keys: method, the ``x-id`` (or the query's first
    name, or "object"/"bucket"), status code; counts of the lines after ``offset``."""
    counts: dict[str, int] = {}
    with path.open("rb") as log:
        log.seek(offset)
        for raw in log:
            match = _LINE.search(raw.decode(errors="replace"))
            if not match:
                continue
            target, _, query = match.group("path").partition("?")
            operation = re.search(r"x-id=(\w+)", query)
            if operation:
                name = operation.group(1)
            elif query:
                name = query.split("=", 1)[0].split("&", 1)[0]
            else:
                name = "object" if target.strip("/").count("/") else "bucket"
            key = f"{match.group('method')} {name} {match.group('code')}"
            counts[key] = counts.get(key, 0) + 1
    return counts
