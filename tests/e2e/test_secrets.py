"""No secret reaches a log, Event, status, metric, pod spec or termination message.

Runs a scenario that touches every path (encrypted upload interrupted and resumed, a
fatal failure, signed callbacks), then scans everything the stack produced for every
secret value it handed out: secret access keys, callback signing keys and the raw
content keys that sat in the node-local resume state.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from tests.bed.faultproxy import FaultProxy, Respond, Rule
from tests.bed.stack import SYSTEM_NAMESPACE, Stack
from tests.support.callbacks import CallbackReceiver
from tests.support.kube import as_dict, wait_for
from voicevault import API_GROUP, API_VERSION

pytestmark = [pytest.mark.kube, pytest.mark.s3, pytest.mark.slow]
MIB = 1 << 20


def _state_files(stack: Stack) -> list[Path]:
    return list(
        (stack.kubelet.root / "nodes").glob(
            "*/var/lib/voicevault/recordings/.voicevault/state/*.json"
        )
    )


def _everything(stack: Stack) -> dict[str, str]:
    """Every text the stack produced, by where it came from."""
    texts: dict[str, str] = {
        "operator.log": stack.operator.log(),
        "metrics": stack.operator.metrics(),
    }
    for path in (stack.kubelet.root / "pods").glob("*/*"):
        if path.is_file() and path.name in ("container.log", "termination-log"):
            texts[str(path.relative_to(stack.kubelet.root))] = path.read_text(errors="replace")
    events = stack.core.list_event_for_all_namespaces().items
    texts["events"] = "\n".join(f"{e.reason} {e.message}" for e in events)
    for plural in ("recordings", "voicestoragesettings", "awscredentials"):
        items = as_dict(stack.custom.list_cluster_custom_object(API_GROUP, API_VERSION, plural))[
            "items"
        ]
        texts[plural] = json.dumps([i.get("status") for i in items])
    pods = stack.core.list_namespaced_pod(SYSTEM_NAMESPACE).items
    texts["pod specs"] = json.dumps([stack.api.sanitize_for_serialization(p.spec) for p in pods])
    return texts


def test_no_secret_leaks_anywhere(
    live_stack: Stack, proxy: FaultProxy, callbacks: CallbackReceiver
) -> None:
    account = live_stack.add_account(
        encrypted=True,
        endpoint=proxy.url,
        callback_url=callbacks.url(),
        signing_key="sign-me-" + os.urandom(8).hex(),
    )
    proxy.add_rule(
        Rule(
            action=Respond(503, "SlowDown", "wait"),
            method="PUT",
            query_contains="partNumber",
            after=2,
        )
    )
    live_stack.record(account, "secretive", os.urandom(17 * MIB))
    live_stack.wait_phase(account.namespace, "secretive", "Retrying", timeout=90)
    states = wait_for(lambda: _state_files(live_stack), what="a resume state file on the node")
    content_keys = {
        json.loads(p.read_text())["encryption"]["content_key"]
        for p in states
        if json.loads(p.read_text()).get("encryption")
    }
    assert content_keys
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in states), "owner-only state files"
    proxy.clear_rules()
    live_stack.wait_phase(account.namespace, "secretive", "Completed", timeout=90)

    denied = live_stack.add_account(secret_access_key="wrong-" + os.urandom(16).hex())
    live_stack.record(denied, "denied", os.urandom(1000))
    live_stack.wait_phase(denied.namespace, "denied", "Failed", timeout=60)
    live_stack.wait_condition(account.namespace, "recordings", "secretive", "CallbackDelivered")

    secrets = set(live_stack.secrets)
    for key in content_keys:
        raw = base64.b64decode(key)
        secrets |= {key, raw.hex(), base64.urlsafe_b64encode(raw).decode()}
    found = [
        (where, s[:6] + "…")
        for where, text in _everything(live_stack).items()
        for s in secrets
        if s in text
    ]
    assert found == [], f"secrets found in: {found}"
    assert len(secrets) >= 5
    # positive control: the scan finds them where they belong (the mounted batch Secret)
    mounted = "".join(
        p.read_text()
        for p in (live_stack.kubelet.root / "pods").glob("*/volumes/batch/credential-*")
    )
    assert any(s in mounted for s in live_stack.secrets)
