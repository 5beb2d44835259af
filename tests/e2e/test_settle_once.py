"""Every finished recording is settled exactly once in a fault-free run.

The same completion reaches the operator by several roads at once: the uploader's own
status write (a watch event), the periodic resync (a page listed a moment before), and the
pod-outcome reader. Here hundreds of recordings on several nodes finish together while the
resync runs at its shortest and the callback receiver answers slowly, which is when a
stale view used to settle a recording a second time (two Stored Events, two callbacks).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.bed.controlplane import ControlPlane
from tests.bed.s3_moto import MotoS3
from tests.bed.stack import Stack
from tests.support.callbacks import CallbackReceiver
from tests.support.invariants import metric
from tests.support.kube import wait_for

pytestmark = [pytest.mark.kube, pytest.mark.s3, pytest.mark.slow]
RECORDINGS = 240
NODES = ("node-a", "node-b", "node-c", "node-d")
RESYNC = "0.5"  # seconds: the resync at its shortest, listing every recording all the time


@pytest.fixture(scope="module")
def busy_stack(moto_s3: MotoS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with ControlPlane(tmp_path_factory.mktemp("settle-controlplane")) as plane:
        stack = Stack(
            plane,
            moto_s3,
            tmp_path_factory.mktemp("settle"),
            nodes=NODES,
            # the premise is a fault-free run: a Lease lost on a starved machine is a
            # fault (its claim is resent with the same idempotency token, by design),
            # so the Lease here outlasts any stall; the lost-Lease paths have tests of
            # their own (tests/e2e/test_leader_election.py, the rolling upgrade)
            operator_args=[
                "--resync-interval",
                RESYNC,
                "--lease-duration",
                "60",
                "--renew-deadline",
                "45",
            ],
        ).start()
        try:
            yield stack
        finally:
            stack.stop()


def _resync_lists(stack: Stack) -> float:
    return metric(
        stack.operator.metrics(),
        "voicevault_kube_requests_total",
        verb="list",
        resource="recordings",
    )


def test_hundreds_of_recordings_are_each_stored_and_called_back_once(
    busy_stack: Stack, callbacks: CallbackReceiver
) -> None:
    stack = busy_stack
    callbacks.latency = 0.2
    account = stack.add_account(callback_url=callbacks.url(), signing_key="k" * 32)
    names = [f"call-{i:03d}" for i in range(RECORDINGS)]
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda i: stack.record(
                    account, names[i], os.urandom(500 + i), node=NODES[i % len(NODES)]
                ),
                range(RECORDINGS),
            )
        )

    def statuses() -> dict[str, dict[str, Any]]:
        items: list[dict[str, Any]] = stack.custom.list_namespaced_custom_object(
            "voicevault.io", "v1alpha1", account.namespace, "recordings"
        )["items"]  # type: ignore[index]
        return {i["metadata"]["name"]: i.get("status") or {} for i in items}

    def all_settled() -> dict[str, dict[str, Any]] | None:
        found = statuses()
        done = all(
            s.get("phase") == "Completed"
            and any(
                c["type"] == "CallbackDelivered" and c["status"] == "True"
                for c in s.get("conditions", [])
            )
            for s in found.values()
        )
        return found if done and len(found) == RECORDINGS else None

    settled = wait_for(all_settled, timeout=150, interval=1, what="every recording settled")
    assert not stack.operator.lease_losses, "the operator lost its Lease: not a fault-free run"
    # two more whole resync passes over the settled recordings, and nothing left waiting:
    # any stale view still in flight has been handled by then
    lists = _resync_lists(stack)
    wait_for(
        lambda: (
            _resync_lists(stack) >= lists + 2
            and metric(stack.operator.metrics(), "voicevault_recording_events_waiting") == 0
        ),
        what="two resync passes after the last settlement",
    )

    stored = Counter(
        str(e.involved_object.name) for e in stack.events(account.namespace) if e.reason == "Stored"
    )
    twice = {name: n for name, n in stored.items() if n != 1}
    assert not twice, f"recordings with more than one Stored Event: {twice}"
    assert set(stored) == set(names), "each recording has its Stored Event"

    sids = {str(s["sid"]): name for name, s in settled.items()}
    with callbacks._lock:
        received = list(callbacks.received)
    per_sid = Counter(r.params["RecordingSid"] for r in received)
    repeated = {sids.get(sid, sid): n for sid, n in per_sid.items() if n != 1}
    assert not repeated, f"recordings called back more than once: {repeated}"
    assert set(per_sid) == set(sids), "each recording was called back"
    tokens = {
        r.params["RecordingSid"]: r.headers.get("I-Twilio-Idempotency-Token") for r in received
    }
    assert all(tokens.values()), "every callback carries an idempotency token"
    assert len(set(tokens.values())) == RECORDINGS, "one token per recording and outcome"
    assert all(str(t).startswith(sid) for sid, t in tokens.items())
    for status in settled.values():
        assert status["callbackAttempts"] == 1
