"""The operator holds no Secret body it does not need: it watches Secret metadata only and
reads just the Secrets that its resources name, when they change."""

from __future__ import annotations

import base64
import os

import pytest
from kubernetes import client as k8s

from tests.bed.fixtures import unique_name
from tests.bed.stack import Stack
from tests.support.invariants import metric
from tests.support.kube import wait_for

pytestmark = [pytest.mark.kube]

BODY = 256 * 1024  # a Helm release's size
UNRELATED = 12


def _reads(text: str) -> float:
    return metric(text, "voicevault_kube_requests_total", verb="get", resource="secrets")


def _watched(text: str) -> float:
    return metric(text, "voicevault_secret_watch_bytes_total")


def _ready(stack: Stack, namespace: str) -> str | None:
    conditions = (stack.get(namespace, "awscredentials", "s3-writer").get("status") or {}).get(
        "conditions"
    ) or []
    return next((c["status"] for c in conditions if c["type"] == "Ready"), None)


def test_unrelated_secrets_stream_no_body_and_a_named_one_is_read_when_it_changes(
    live_stack: Stack,
) -> None:
    account = live_stack.add_account()
    ns = account.namespace
    other = unique_name("unrelated")
    live_stack.core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=other)))
    before, wire = live_stack.operator.metrics(), live_stack.api_relay.bytes_down
    blob = base64.b64encode(os.urandom(BODY)).decode()
    # Helm-release-sized Secrets beside the account's own and in another namespace, each
    # created and then changed: every one of them is a watch event
    for i in range(UNRELATED):
        where = ns if i % 2 else other
        live_stack.core.create_namespaced_secret(
            where,
            k8s.V1Secret(
                metadata=k8s.V1ObjectMeta(name=f"sh.helm.release.v1.app{i}.v1"), data={"r": blob}
            ),
        )
        live_stack.core.patch_namespaced_secret(
            f"sh.helm.release.v1.app{i}.v1", where, {"metadata": {"labels": {"status": "x"}}}
        )
    # then the credential's own Secret loses its secret key: that one is read, and the
    # credential says so within seconds (the watch delivers events in order, so every
    # unrelated event above was seen before this one)
    live_stack.core.patch_namespaced_secret(
        "s3-writer-keys", ns, {"data": {"AWS_SECRET_ACCESS_KEY": None}}
    )
    wait_for(lambda: _ready(live_stack, ns) == "False", timeout=30, what="credential not Ready")
    after = live_stack.operator.metrics()
    events = 2 * UNRELATED
    assert _reads(after) - _reads(before) < events / 4, "Secret bodies read for unrelated events"
    assert _watched(after) - _watched(before) < events * BODY / 50, "Secret bodies were watched"
    # what crossed the wire to the operator agrees (TLS records, every request included)
    assert live_stack.api_relay.bytes_down - wire < events * BODY / 10, "bodies reached it"
    # and the fix takes effect as fast
    restored = account.s3.secret_access_key.encode()
    live_stack.core.patch_namespaced_secret(
        "s3-writer-keys",
        ns,
        {"data": {"AWS_SECRET_ACCESS_KEY": base64.b64encode(restored).decode()}},
    )
    wait_for(lambda: _ready(live_stack, ns) == "True", timeout=30, what="credential Ready again")
