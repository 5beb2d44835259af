"""Conditions that only move their lastTransitionTime when their status flips.

A status that is rewritten with a fresh timestamp on every reconcile never settles: GitOps
tools see a perpetual diff and the operator patches in a loop. These helpers keep the
old condition untouched when nothing about it changed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def condition(
    type_: str,
    status: bool | str,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None = None,
) -> dict[str, Any]:
    value = status if isinstance(status, str) else ("True" if status else "False")
    cond: dict[str, Any] = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": iso(now),
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def merge_conditions(
    current: list[dict[str, Any]], updates: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """`current` with `updates` applied by type; a transition time moves only on a flip."""
    merged = {c.get("type"): dict(c) for c in current}
    for update in updates:
        old = merged.get(update["type"])
        kept = dict(update)
        if old is not None and old.get("status") == update["status"]:
            kept["lastTransitionTime"] = old.get("lastTransitionTime", update["lastTransitionTime"])
        merged[update["type"]] = kept
    return sorted(merged.values(), key=lambda c: str(c.get("type")))


def find(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def is_true(conditions: list[dict[str, Any]] | None, type_: str) -> bool:
    found = find(conditions, type_)
    return found is not None and found.get("status") == "True"


def iso(moment: datetime) -> str:
    """RFC 3339 in UTC with second precision, as Kubernetes writes times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    """A Kubernetes timestamp back into an aware datetime (None stays None)."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
