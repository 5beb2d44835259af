"""The apiserver's own counters: requests by verb and resource, watch events by kind."""

from __future__ import annotations

import re
import ssl
import urllib.request
from collections.abc import Mapping
from typing import Any

_LABELS = re.compile(r'(\w+)="([^"]*)"')

Requests = dict[tuple[str, str, str], float]  # (verb, resource, subresource) -> count
WatchEvents = dict[str, float]  # kind -> events sent to watchers

WRITE_VERBS = ("POST", "PATCH", "PUT", "DELETE")


def scrape(server: str, context: ssl.SSLContext) -> str:
    with urllib.request.urlopen(f"{server}/metrics", context=context, timeout=30) as r:  # noqa: S310
        return str(r.read().decode())


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    prefix = name + "{"
    return [
        (dict(_LABELS.findall(line)), float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith(prefix)
    ]


def requests_by_code(text: str) -> dict[tuple[str, str, str, str], float]:
    """``apiserver_request_total`` by (verb, resource, subresource, code), over scopes."""
    counts: dict[tuple[str, str, str, str], float] = {}
    for labels, value in _samples(text, "apiserver_request_total"):
        key = (
            labels.get("verb", ""),
            labels.get("resource", ""),
            labels.get("subresource", ""),
            labels.get("code", ""),
        )
        counts[key] = counts.get(key, 0.0) + value
    return counts


def requests(text: str) -> Requests:
    """``apiserver_request_total`` summed over codes (and scopes)."""
    counts: Requests = {}
    for (verb, resource, sub, _), value in requests_by_code(text).items():
        counts[verb, resource, sub] = counts.get((verb, resource, sub), 0.0) + value
    return counts


def watch_events(text: str) -> WatchEvents:
    """``apiserver_watch_events_total`` by kind: one count per event per watch it went to."""
    counts: WatchEvents = {}
    for labels, value in _samples(text, "apiserver_watch_events_total"):
        kind = labels.get("kind") or labels.get("resource") or "?"
        counts[kind] = counts.get(kind, 0.0) + value
    return counts


def diff(after: Mapping[Any, float], before: Mapping[Any, float]) -> dict[Any, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


def request_rows(requests: Requests, recordings: int) -> list[tuple[str, str, float, float]]:
    """(verb, resource[/subresource], count, per recording), most frequent first."""
    rows = [
        (verb, resource + (f"/{sub}" if sub else ""), count, count / recordings)
        for (verb, resource, sub), count in requests.items()
    ]
    return sorted(rows, key=lambda row: -row[2])
