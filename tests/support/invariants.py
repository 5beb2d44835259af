"""What must hold after any fault: nothing lost, nothing corrupt, nothing left open."""

from __future__ import annotations

import io
import time
import urllib.parse
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.bed.stack import Account, Stack
from tests.support.kube import wait_for
from voicevault.uploader import envelope

SETTLED = {"Completed", "Cached", "Failed"}


@dataclass
class Outcome:
    phases: Counter[str] = field(default_factory=Counter)
    corrupt: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    open_uploads: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    def add(self, other: Outcome) -> None:
        self.phases.update(other.phases)
        self.corrupt += other.corrupt
        self.lost += other.lost
        self.open_uploads += other.open_uploads
        self.duplicates += other.duplicates
        self.kept += other.kept

    def assert_clean(self) -> None:
        assert not self.lost, f"lost: {self.lost}"
        assert not self.corrupt, f"corrupt: {self.corrupt}"
        assert not self.duplicates, f"not exactly one object: {self.duplicates}"
        assert not self.kept, f"media kept after a fatal failure: {self.kept}"
        assert not self.open_uploads, (
            f"open multipart uploads of finished recordings: {self.open_uploads}"
        )


def check(
    stack: Stack, account: Account, data: dict[str, bytes], node_of: dict[str, str]
) -> Outcome:
    """Every recording Completed (exactly one object, exact, at its mediaUrl), Cached (media
    on its node) or Failed fatal (media gone once an uploader handled it)."""
    out = Outcome()
    open_keys = {u["Key"] for u in stack.open_uploads(account)}
    stored_keys = _object_keys(stack, account)
    for name, payload in data.items():
        status: dict[str, Any] = (
            stack.get(account.namespace, "recordings", name).get("status") or {}
        )
        phase = status.get("phase", "none")
        out.phases[phase] += 1
        media = stack.media_file(node_of[name], account.namespace, f"2026/11/{name}.wav")
        key = (status.get("storage") or {}).get("objectKey", "")
        if phase == "Completed":
            stored = stack.object_bytes(account, key)
            if _plain(stored, status, account) != payload:
                out.corrupt.append(name)
            if not _gone_soon(media):
                out.lost.append(f"{name}: Completed but the media is still on the node")
            # keys are <prefix><account>/<sid><extension>: one recording, one object
            sid_prefix = f"{key.rpartition('/')[0]}/{status.get('sid')}"
            mine = sorted(k for k in stored_keys if k.startswith(sid_prefix))
            url_path = urllib.parse.unquote(urllib.parse.urlsplit(status["mediaUrl"]).path)
            if mine != [key] or not url_path.endswith(f"/{key}"):
                out.duplicates.append(f"{name}: objects {mine}, mediaUrl {status['mediaUrl']}")
        elif phase == "Cached":
            if not media.exists():
                out.lost.append(f"{name}: Cached but the media is gone")
        elif phase == "Failed":
            if status.get("errorClass") != "Fatal":
                out.lost.append(f"{name}: Failed without a fatal cause")
            # attempts 0: failed before any uploader saw it (an invalid spec), nothing deleted
            if int(status.get("attempts") or 0) > 0 and media.exists():
                out.kept.append(name)
        else:
            out.lost.append(f"{name}: ended {phase}")
        if phase in ("Completed", "Failed") and key in open_keys:
            out.open_uploads.append(name)
    return out


def _object_keys(stack: Stack, account: Account) -> set[str]:
    client = stack.s3.admin_client()
    keys: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=account.s3.bucket):
        keys.update(o["Key"] for o in page.get("Contents", []))
    return keys


def _gone_soon(path: Path, timeout: float = 15) -> bool:
    """The uploader deletes the media just after writing Completed: allow it a moment."""
    deadline = time.monotonic() + timeout
    while path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _plain(stored: bytes, status: dict[str, Any], account: Account) -> bytes:
    details = status.get("encryptionDetails")
    if not details:
        return stored
    assert account.keys is not None
    content_key = envelope.open_content_key(
        account.keys.private_pem, envelope.EncryptionDetails.from_mapping(details)
    )
    out = io.BytesIO()
    envelope.decrypt_stream(content_key, io.BytesIO(stored), out, len(stored))
    return out.getvalue()


def settled(stack: Stack, namespace: str, names: list[str]) -> bool:
    for name in names:
        phase = (stack.get(namespace, "recordings", name).get("status") or {}).get("phase")
        if phase not in SETTLED:
            return False
    return True


def samples(text: str, name: str, /, **labels: str) -> list[float]:
    """The values of the samples called `name` (as exposed: `..._total`, `..._count`) whose
    labels include `labels`, in a Prometheus text scrape."""
    return [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    ]


def metric(text: str, name: str, /, **labels: str) -> float:
    """The sum of those samples; 0 when there are none (a counter not yet incremented)."""
    return sum(samples(text, name, **labels))


def wait_metrics_moved(
    stack: Stack,
    before: str,
    moves: Sequence[tuple[str, dict[str, str], float]],
    timeout: float = 20,
) -> str:
    """Wait until every (name, labels, by) moved by at least `by` since the scrape `before`
    (a negative `by`: fell by at least that much); returns the last scrape."""
    short: list[str] = []

    def reached() -> str | None:
        now = stack.operator.metrics()
        short[:] = []
        for name, labels, by in moves:
            delta = metric(now, name, **labels) - metric(before, name, **labels)
            if (delta < by) if by >= 0 else (delta > by):
                short.append(f"{name}{labels or ''} moved {delta:+g}, not {by:+g}")
        return None if short else now

    try:
        return wait_for(reached, timeout=timeout, what="the metrics to move")
    except AssertionError:
        raise AssertionError(f"metrics did not move as expected: {short}") from None
