"""The mutating webhook gives a Recording its finalizer in its create, through a real API
server, and never holds one back: down, hung or absent, the create goes through and the
operator writes the finalizer itself.

A stack of its own with the chart's webhook configurations (URL client config on
loopback), as `make up` runs it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import watch

from bench import apimetrics
from tests.bed.s3_moto import MotoS3
from tests.bed.stack import RELEASE, SYSTEM_NAMESPACE, Account, Stack, recording_spec
from tests.bed.stack_fixtures import own_stack, running
from tests.support.invariants import metric
from tests.support.kube import apiserver_request_counts, as_dict, kubectl, wait_for
from voicevault import API_GROUP, API_VERSION
from voicevault.crds.recording import FINALIZER
from voicevault.operator.config import WebhookConfig
from voicevault.operator.webhook import Webhook

pytestmark = [pytest.mark.kube, pytest.mark.s3, pytest.mark.slow]

HOOK = "recordings.voicevault.io"
# a counter without _total as exposed: the text parser names its sample with one
FAIL_OPEN = "apiserver_admission_webhook_fail_open_count_total"
REVIEWS = "voicevault_webhook_reviews_total"


@pytest.fixture(scope="module")
def hooked(moto_s3: MotoS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with own_stack(moto_s3, tmp_path_factory, "finalizer", webhook=True) as stack:
        yield stack


@pytest.fixture(scope="module")
def account(hooked: Stack) -> Account:
    return hooked.add_account()


@pytest.fixture
def live(hooked: Stack) -> Stack:
    return running(hooked)


def _recording(stack: Stack, account: Account, name: str) -> dict[str, Any]:
    rel = f"2026/11/{name}.wav"
    stack.put_media(stack.nodes[0], account.namespace, rel, b"RIFF" + os.urandom(3000))
    return {"metadata": {"name": name}, "spec": recording_spec(stack.nodes[0], rel)}


def _admitted_with_finalizer(stack: Stack, account: Account, body: dict[str, Any]) -> bool:
    """A dry run of the create: the webhook is called (it has no side effects), and
    nothing is stored for an operator to act on."""
    full = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "Recording", **body}
    answer = as_dict(
        stack.custom.create_namespaced_custom_object(
            API_GROUP, API_VERSION, account.namespace, "recordings", full, dry_run="All"
        )
    )
    return bool(answer["metadata"].get("finalizers") == [FINALIZER])


def _webhook_alone(stack: Stack, account: Account) -> Webhook:
    """The operator killed, and its webhook served on its port by the operator's own
    server in this process: admission goes on while nothing reconciles."""
    stack.operator.kill()
    alone = Webhook(
        stack.api,
        WebhookConfig(
            namespace=SYSTEM_NAMESPACE,
            cert_secret=f"{RELEASE}-webhook-cert",
            configuration=RELEASE,
            service=RELEASE,
            extra_hosts=("127.0.0.1",),
            bind_address="127.0.0.1",
            port=stack.operator.webhook_port,
        ),
    )
    alone.start()
    probe = _recording(stack, account, "probe")
    wait_for(lambda: _admitted_with_finalizer(stack, account, probe), what="the webhook alone")
    return alone


def _fail_opens(stack: Stack) -> float:
    """Calls of the recording webhook that failed and were let through (Ignore)."""
    return metric(stack.cp.metrics(), FAIL_OPEN, name=HOOK)


def test_a_recording_has_its_finalizer_from_its_create_and_the_operator_never_writes_it(
    live: Stack, account: Account
) -> None:
    reviewed = metric(live.operator.metrics(), REVIEWS, kind="Recording", allowed="true")
    requests = apiserver_request_counts(live.cp)
    listed = as_dict(
        live.custom.list_namespaced_custom_object(
            API_GROUP, API_VERSION, account.namespace, "recordings"
        )
    )
    created = live.create(account.namespace, "recordings", _recording(live, account, "at-create"))
    assert created["metadata"]["finalizers"] == [FINALIZER], "the create's answer carries it"
    seen: list[tuple[str, list[str], str | None]] = []
    stream = watch.Watch().stream(
        live.custom.list_namespaced_custom_object,
        API_GROUP,
        API_VERSION,
        account.namespace,
        "recordings",
        resource_version=listed["metadata"]["resourceVersion"],
        field_selector="metadata.name=at-create",
        timeout_seconds=90,
    )
    for event in stream:
        body = event["object"]
        phase = (body.get("status") or {}).get("phase")
        seen.append((event["type"], body["metadata"].get("finalizers", []), phase))
        if phase == "Completed":
            break
    assert seen[0] == ("ADDED", [FINALIZER], None), seen
    assert seen[-1][2] == "Completed", f"the watch ended first: {seen}"
    # every change after the create was a status write: none touched the finalizers
    assert all(finalizers == [FINALIZER] for _, finalizers, _ in seen), seen
    assert all(phase is not None for kind, _, phase in seen if kind == "MODIFIED"), seen
    spent = apimetrics.diff(apiserver_request_counts(live.cp), requests)
    patches = {key: n for key, n in spent.items() if key[:3] == ("PATCH", "recordings", "")}
    assert not patches, f"the Recording itself was patched: {patches}"
    assert metric(live.operator.metrics(), REVIEWS, kind="Recording", allowed="true") == (
        reviewed + 1
    )


def test_a_hung_webhook_lets_the_create_through_and_the_operator_adds_the_finalizer(
    live: Stack, account: Account
) -> None:
    """The operator frozen (SIGSTOP): its port takes connections and answers nothing."""
    process = live.operator.process
    assert process is not None
    opened = _fail_opens(live)
    os.kill(process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        created = live.create(account.namespace, "recordings", _recording(live, account, "hung"))
        took = time.monotonic() - started
    finally:
        os.kill(process.pid, signal.SIGCONT)
    assert "finalizers" not in created["metadata"], "nobody answered: admitted as it was"
    # the chart's 2 s timeout, not the API server's default of 10 s
    assert took < 8, f"the create waited {took:.1f} s for the webhook"
    assert _fail_opens(live) == opened + 1
    done = live.wait_phase(account.namespace, "hung", "Completed", timeout=90)
    assert done["metadata"]["finalizers"] == [FINALIZER], "the operator added it"


def test_admitted_with_the_finalizer_and_deleted_before_the_operator_saw_it_is_purged(
    live: Stack, account: Account
) -> None:
    """A replica that serves the webhook while no operator reconciles (a standby's, say):
    the Recording is deleted at once. The operator that comes up purges its media from the
    node and only then releases it."""
    body = _recording(live, account, "gone-early")
    media = live.media_file(live.nodes[0], account.namespace, body["spec"]["mediaPath"])
    standby = _webhook_alone(live, account)
    try:
        created = live.create(account.namespace, "recordings", body)
        assert created["metadata"]["finalizers"] == [FINALIZER]
        live.delete(account.namespace, "recordings", "gone-early")
        held = live.get(account.namespace, "recordings", "gone-early")
        assert held["metadata"]["deletionTimestamp"], "the finalizer holds it"
        assert "status" not in held and media.exists()
    finally:
        standby.stop()
    running(live)

    def released() -> bool:
        try:
            live.get(account.namespace, "recordings", "gone-early")
        except k8s.ApiException as exc:
            if exc.status != 404:
                raise
            return True
        return False

    wait_for(released, timeout=90, what="the deleted recording to be purged and released")
    assert not media.exists(), "its media was purged from the node before the release"


def test_a_server_side_apply_again_keeps_the_finalizer_it_never_named(
    live: Stack, account: Account
) -> None:
    """GitOps: the finalizer added at admission belongs to no field manager, so the next
    apply of the same manifest (without it) does not take it away. No operator runs
    meanwhile: nobody could have put it back."""
    doc = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "Recording",
        **_recording(live, account, "applied"),
    }
    doc["metadata"]["namespace"] = account.namespace
    ssa = ("apply", "--server-side", "--field-manager=gitops", "-f", "-")
    alone = _webhook_alone(live, account)
    try:
        kubectl(live.cp.admin_kubeconfig, *ssa, input_text=json.dumps(doc))
        first = live.get(account.namespace, "recordings", "applied")
        assert first["metadata"]["finalizers"] == [FINALIZER]
        doc["metadata"]["labels"] = {"team": "a"}
        kubectl(live.cp.admin_kubeconfig, *ssa, input_text=json.dumps(doc))
    finally:
        alone.stop()
    again = live.get(account.namespace, "recordings", "applied")
    assert again["metadata"]["labels"] == {"team": "a"}, "the second apply took effect"
    assert again["metadata"]["finalizers"] == [FINALIZER]
    owned = [m for m in again["metadata"]["managedFields"] if "f:finalizers" in json.dumps(m)]
    assert not owned, owned
    running(live)
    live.wait_phase(account.namespace, "applied", "Completed", timeout=90)
