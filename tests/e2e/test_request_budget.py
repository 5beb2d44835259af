"""What one recording costs the API server, counted by the apiserver itself.

Every client is counted (the operator, the uploader pods, the stand-in kubelet), over a
burst on several nodes with the shipped resync interval and the chart's webhooks, on a
control plane of its own so no other test's traffic is in the count. List and watch are
left out: the resync and this test's own waits.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from bench import apimetrics
from tests.bed.s3_moto import MotoS3
from tests.bed.stack import POLL_INTERVAL_S, SYSTEM_NAMESPACE, Stack
from tests.bed.stack_fixtures import own_stack
from tests.support.invariants import metric
from tests.support.kube import apiserver_request_counts, wait_for
from voicevault import phases

pytestmark = [pytest.mark.kube, pytest.mark.s3]
NODES = ("node-a", "node-b", "node-c", "node-d")


@pytest.fixture(scope="module")
def quiet_stack(moto_s3: MotoS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with own_stack(
        moto_s3,
        tmp_path_factory,
        "budget",
        nodes=NODES,
        webhook=True,
        # the certificate keeper looks as often as shipped, not every second as in the bed
        operator_args=["--webhook-cert-check-interval=300"],
    ) as stack:
        yield stack


BUDGET_RECORDINGS = 40
# Per recording without a callback, besides its create (which carries the finalizer, from
# the mutating webhook): Scheduled (the claim for a pod, with the snapshot), the
# uploader's outcome (with Stored), one Event.
BUDGET = {
    ("PATCH", "recordings", "status"): 2.0,
    ("POST", "events", ""): 1.0,
}
FINALIZER_WRITE = ("PATCH", "recordings", "")
# Per uploader pod: the operator's node read, Secret, pod, owner reference, the pod's
# Event and two deletes; the kubelet's pod status writes, Secret reads, token, Events.
POD_SHARE = 18
POD_EVENTS = 2  # the operator's Uploading Event, and the kubelet's
UNCOUNTED = ("leases", "namespaces", "awscredentials", "voicestoragesettings")
CREATE = ("POST", "recordings")
LISTS = "voicevault_kube_requests_total"


def test_a_recording_costs_its_writes_and_one_event_and_no_reads(quiet_stack: Stack) -> None:
    stack = quiet_stack
    account = stack.add_account()
    # the account's own Events (credential, setting) are posted before the count starts
    wait_for(
        lambda: metric(stack.operator.metrics(), "voicevault_events_pending") == 0,
        what="the account's Events posted",
    )
    before = apiserver_request_counts(stack.cp)
    lists_before = metric(stack.operator.metrics(), LISTS, verb="list", resource="pods")
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda i: stack.record(
                    account, f"budget-{i:02d}", os.urandom(700), node=NODES[i % len(NODES)]
                ),
                range(BUDGET_RECORDINGS),
            )
        )

    def settled() -> bool:
        items = stack.custom.list_namespaced_custom_object(
            "voicevault.io", "v1alpha1", account.namespace, "recordings"
        )["items"]  # type: ignore[index]
        return len(items) == BUDGET_RECORDINGS and all(
            (i.get("status") or {}).get("phase") == "Completed"
            and any(c["type"] == "Stored" for c in i["status"].get("conditions", []))
            for i in items
        )

    wait_for(settled, timeout=120, what="every recording Completed and Stored")
    wait_for(
        lambda: (
            not stack.uploader_pods()
            and metric(stack.operator.metrics(), "voicevault_events_pending") == 0
        ),
        what="the uploader pods gone and no Event waiting",
    )
    # the scheduler lists its pods once a poll interval, not each time work is queued
    lists = metric(stack.operator.metrics(), LISTS, verb="list", resource="pods") - lists_before
    assert lists <= (time.monotonic() - started) / POLL_INTERVAL_S + 2, lists
    normal = Counter(
        e.reason
        for e in stack.events(account.namespace)
        if e.type == "Normal" and e.involved_object.kind == "Recording"
    )
    assert normal == {"Stored": BUDGET_RECORDINGS}, "one Normal Event per recording: its outcome"
    batches = [
        e
        for e in stack.core.list_namespaced_event(SYSTEM_NAMESPACE).items
        if e.reason == "Uploading" and e.involved_object.kind == "Pod"
    ]
    pods = metric(stack.operator.metrics(), "voicevault_uploader_pods_created_total")
    # one per pod, naming its first batch; the later ones it asked for post none
    assert len(batches) == pods, [e.message for e in batches]
    carried = sum(int(str(e.message).split()[0]) for e in batches)
    assert carried <= BUDGET_RECORDINGS, [e.message for e in batches]
    after = apiserver_request_counts(stack.cp)
    spent: dict[tuple[str, str, str], float] = {}
    conflicts = 0.0  # a resync page crossing a write costs a 409, a read and a write again
    for (verb, resource, sub, code), n in apimetrics.diff(after, before).items():
        if verb in ("LIST", "WATCH") or resource in UNCOUNTED or (verb, resource) == CREATE:
            continue
        spent[verb, resource, sub] = spent.get((verb, resource, sub), 0.0) + n
        if resource == "recordings" and code == "409":
            conflicts += n
    per = {key: n / BUDGET_RECORDINGS for key, n in spent.items()}
    assert spent.get(FINALIZER_WRITE, 0.0) == 0, f"the webhook gives the finalizer at create: {per}"
    reads = sum(n for key, n in spent.items() if key[0] == "GET" and key[1] == "recordings")
    assert reads <= conflicts, f"recordings read {reads} times, {conflicts} conflicts: {per}"
    assert conflicts <= BUDGET_RECORDINGS / 10, f"{conflicts} conflicts in a fault-free burst"
    for key, allowed in BUDGET.items():
        extra = POD_EVENTS * pods if key[1] == "events" else conflicts
        assert spent.get(key, 0.0) <= allowed * BUDGET_RECORDINGS + extra, (key, per)
    total = sum(spent.values())
    assert total <= BUDGET_RECORDINGS * sum(BUDGET.values()) + POD_SHARE * pods + 2 * conflicts, per


def test_the_uploader_writes_the_outcome_with_stored_and_posts_its_named_event(
    quiet_stack: Stack,
) -> None:
    stack = quiet_stack
    account = stack.add_account()
    stack.record(account, "call-1", os.urandom(2048))
    stack.wait_condition(account.namespace, "recordings", "call-1", "Stored", timeout=90)
    body = stack.get(account.namespace, "recordings", "call-1")
    stored = next(c for c in body["status"]["conditions"] if c["type"] == "Stored")
    assert (stored["status"], stored["reason"]) == ("True", "Uploaded")
    assert body["status"]["phase"] == "Completed" and body["status"]["attempts"] == 1
    rec = phases.RecordingView.from_body(body)
    outcome = [e for e in stack.events(account.namespace) if e.reason == "Stored"]
    assert [e.metadata.name for e in outcome] == [f"call-1.{phases.outcome_key(rec)}"]
    assert outcome[0].reporting_component == "voicevault-uploader"
    assert outcome[0].message == f"stored at {body['status']['mediaUrl']}"
