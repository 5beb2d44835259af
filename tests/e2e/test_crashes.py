"""Crashes lose nothing: the operator SIGKILLed mid-batch, an uploader pod killed mid-upload."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.bed.faultproxy import Delay, FaultProxy, Rule
from tests.bed.kubelet import kill_leftovers
from tests.bed.stack import Stack
from tests.support.kube import wait_for

pytestmark = [pytest.mark.kube, pytest.mark.s3, pytest.mark.slow]
MIB = 1 << 20


def media_gone(path: Path) -> Callable[[], bool]:
    return lambda: not path.exists()


def _statuses(stack: Stack, namespace: str, names: list[str]) -> dict[str, dict[str, Any]]:
    return {n: stack.get(namespace, "recordings", n).get("status") or {} for n in names}


def test_operator_sigkilled_mid_batch_every_recording_completes_once(
    live_stack: Stack, proxy: FaultProxy
) -> None:
    account = live_stack.add_account(endpoint=proxy.url)
    proxy.add_rule(Rule(action=Delay(0.4), method="PUT"))  # slow every upload a little
    names = [f"call-{i}" for i in range(8)]
    data = {n: os.urandom((i % 2) * 11 * MIB + 3000) for i, n in enumerate(names)}
    for i, name in enumerate(names):
        live_stack.record(account, name, data[name], node=live_stack.nodes[i % 2])

    def in_flight() -> bool:
        # Scheduled is written before the pod is created: killed in between, no pod would
        # carry on, so wait for one the stand-in kubelet is running
        running = any(p.status and p.status.phase == "Running" for p in live_stack.uploader_pods())
        phases = {s.get("phase") for s in _statuses(live_stack, account.namespace, names).values()}
        return running and bool(phases & {"Scheduled", "Uploading"})

    wait_for(in_flight, timeout=60, what="an uploader pod at work")
    live_stack.operator.kill()
    # the pods carry on without the operator and write their results themselves
    wait_for(
        lambda: any(
            s.get("phase") == "Completed"
            for s in _statuses(live_stack, account.namespace, names).values()
        ),
        timeout=60,
        what="a recording completed while the operator was down",
    )
    live_stack.operator.start()
    proxy.clear_rules()
    for name in names:
        status = live_stack.wait_phase(account.namespace, name, "Completed", timeout=120)["status"]
        assert live_stack.object_bytes(account, status["storage"]["objectKey"]) == data[name]
        media = live_stack.media_file(
            live_stack.nodes[names.index(name) % 2], account.namespace, f"2026/11/{name}.wav"
        )
        wait_for(media_gone(media), timeout=15, what="the media to be deleted")
    wait_for(
        lambda: all(
            any(c["type"] == "Stored" for c in s.get("conditions", []))
            for s in _statuses(live_stack, account.namespace, names).values()
        ),
        timeout=60,
        what="every recording settled",
    )

    def stored_events() -> Counter[str]:
        return Counter(
            str(e.involved_object.name)
            for e in live_stack.events(account.namespace)
            if e.reason == "Stored"
        )

    wait_for(lambda: len(stored_events()) == len(names), what="a Stored event for each")
    assert stored_events() == Counter(dict.fromkeys(names, 1)), (
        "each recording was reported stored exactly once"
    )
    assert live_stack.open_uploads(account) == []


def test_uploader_pod_killed_mid_upload_resumes_without_duplicates(
    live_stack: Stack, proxy: FaultProxy
) -> None:
    account = live_stack.add_account(endpoint=proxy.url)
    proxy.add_rule(Rule(action=Delay(1.0), method="PUT", query_contains="partNumber"))
    data = os.urandom(30 * MIB + 17)
    live_stack.record(account, "long", data, node="node-b")
    admin = live_stack.s3.admin_client()

    def parts_stored() -> int:
        for upload in live_stack.open_uploads(account):
            parts = admin.list_parts(
                Bucket=account.s3.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
            if len(parts.get("Parts", [])) >= 2:
                return len(parts["Parts"])
        return 0

    wait_for(parts_stored, timeout=90, what="two parts in the bucket")
    killed = kill_leftovers(live_stack.kubelet.root, ["node-b"])
    assert killed, "the uploader process was running"
    proxy.clear_rules()
    status = live_stack.wait_phase(account.namespace, "long", "Completed", timeout=120)["status"]
    assert status["attempts"] >= 2
    assert live_stack.object_bytes(account, status["storage"]["objectKey"]) == data
    assert live_stack.open_uploads(account) == [], "no duplicate or stray upload"
    logs = "".join(
        p.read_text() for p in (live_stack.kubelet.root / "pods").glob("*/container.log")
    )
    resumed = [
        json.loads(line)
        for line in logs.splitlines()
        if status["sid"] in line and '"event": "stored"' in line
    ]
    assert resumed and resumed[-1]["resumed"] is True
    skipped = re.search(r"(\d+) skipped", resumed[-1]["msg"])
    assert skipped and int(skipped.group(1)) >= 2, "the parts already stored were not sent again"
