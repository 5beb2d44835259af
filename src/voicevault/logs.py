"""Structured logs: one JSON object per line, with the context a person searches by.

Fields passed with `extra=` (recording, namespace, sid, node, pod, key, event, ...) become
top-level keys. A last line of defence scrubs known secret values from every record, so
even a careless message cannot print a secret access key (see `register_secret`).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import UTC, datetime
from typing import Any

_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}
_secrets: set[str] = set()
_secrets_lock = threading.Lock()
REDACTED = "<redacted>"


def register_secret(value: str | None) -> None:
    """Never print this value: it is replaced by <redacted> in every log line."""
    if value and len(value) >= 8:
        with _secrets_lock:
            _secrets.add(value)


def scrub(text: str) -> str:
    with _secrets_lock:
        found = [s for s in _secrets if s in text]
    for secret in found:
        text = text.replace(secret, REDACTED)
    return text


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    """Context passed with `extra=`: plain values only (libraries pass whole objects)."""
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD
        and not key.startswith("_")
        and isinstance(value, str | int | float | bool | type(None))
    }


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_extras(record))
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        return scrub(json.dumps(entry, default=str))


class PlainFormatter(logging.Formatter):
    """For people at a terminal: `level logger: message key=value ...`."""

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        line = f"{record.levelname.lower():7} {record.name}: {record.getMessage()}"
        return scrub(f"{line} {extras}" if extras else line)


def setup(level: str = "info", fmt: str = "json") -> None:
    """Configure the root logger once for a command."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # third-party chatter stays at warning unless we are debugging
    quiet = "DEBUG" if level == "debug" else "WARNING"
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "kubernetes", "aiohttp"):
        logging.getLogger(noisy).setLevel(quiet)
    # kopf reports every handler call at info; ours log what matters themselves
    logging.getLogger("kopf.objects").setLevel(quiet)
