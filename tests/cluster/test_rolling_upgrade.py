"""A rolling upgrade of the chart under a steady stream of recordings, on the real node.

Two replicas with leader election; ``helm upgrade`` changes the operator's pod template,
so the Deployment's RollingUpdate replaces both pods, the leader included, while new
Recordings keep arriving and uploader pods are at work. No recording may be lost or
settled twice: each ends Completed with its one object, one Stored Event and one
callback, and the Lease has passed to a replica of the new template.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes import client as k8s

from tests.bed.cluster_stack import RELEASE_NAMESPACE, ClusterStack
from tests.bed.faultproxy import Delay, FaultProxy, Rule
from tests.bed.realnode import BRIDGE_IP, NODE_NAME
from tests.bed.realnode_fixtures import CLUSTER_GROUP
from tests.bed.stack import Account
from tests.support.callbacks import CallbackReceiver
from tests.support.invariants import check, metric
from tests.support.kube import wait_for
from voicevault import API_GROUP, API_VERSION

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.xdist_group(CLUSTER_GROUP)]
LEASE = "voicevault-operator"
PACE = 0.25  # seconds between two new recordings: the stream's rate, not a wait
STREAM_LIMIT = 300  # recordings at most, whatever the rollout takes
AFTER_ROLLOUT = 15  # recordings the stream still creates once the new leader leads
SETTLE_TIMEOUT = 300
CALLBACK_LATENCY = 8.0  # seconds the receiver takes to answer each callback


@dataclass
class Stream:
    """Creates a Recording every PACE seconds in a thread of its own, and notes which
    replica held the Lease as each one was created."""

    cluster: ClusterStack
    account: Account
    data: dict[str, bytes] = field(default_factory=dict)
    holders: list[str | None] = field(default_factory=list)
    error: BaseException | None = None
    _stop_after: int | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _done: threading.Event = field(default_factory=threading.Event)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="recording-stream", daemon=True)
        thread.start()
        return thread

    def _run(self) -> None:
        try:
            for i in range(STREAM_LIMIT):
                with self._lock:
                    if self._stop_after is not None and len(self.data) >= self._stop_after:
                        break
                name = f"call-{i:03d}"
                payload = os.urandom(1500 + i)
                holder = self.cluster.lease_holder()
                self.cluster.record(self.account, name, payload)
                with self._lock:
                    self.data[name] = payload
                    self.holders.append(holder)
                self._done.wait(PACE)
        except BaseException as exc:  # re-raised in the test's thread by finish()
            self.error = exc

    def created(self) -> int:
        with self._lock:
            return len(self.data)

    def finish_after(self, more: int) -> None:
        with self._lock:
            self._stop_after = len(self.data) + more

    def abort(self) -> None:
        with self._lock:
            self._stop_after = 0
        self._done.set()


def _lease(cluster: ClusterStack) -> Any:
    return k8s.CoordinationV1Api(cluster.api).read_namespaced_lease(LEASE, RELEASE_NAMESPACE).spec


def _statuses(cluster: ClusterStack, namespace: str) -> dict[str, dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.custom.list_namespaced_custom_object(
        API_GROUP, API_VERSION, namespace, "recordings"
    )["items"]  # type: ignore[index]
    return {i["metadata"]["name"]: i.get("status") or {} for i in items}


def _delivered(status: dict[str, Any]) -> bool:
    return status.get("phase") == "Completed" and any(
        c["type"] == "CallbackDelivered" and c["status"] == "True"
        for c in status.get("conditions") or []
    )


def _resync_lists(cluster: ClusterStack) -> float:
    return metric(
        cluster.operator_metrics(),
        "voicevault_kube_requests_total",
        verb="list",
        resource="recordings",
    )


@pytest.fixture
def bridge_proxy(cluster: ClusterStack) -> Iterator[FaultProxy]:
    with FaultProxy(cluster.s3.endpoint_url, host=BRIDGE_IP) as proxy:
        yield proxy


def test_rolling_upgrade_under_a_steady_stream_loses_and_doubles_nothing(
    cluster: ClusterStack, bridge_proxy: FaultProxy, bridge_callbacks: CallbackReceiver
) -> None:
    started = time.monotonic()
    before = cluster.wait_operator_ready()
    old_pods = {p.metadata.uid for p in cluster.operator_pods()}
    assert len(old_pods) == 2, "the chart runs two replicas"
    transitions = int(_lease(cluster).lease_transitions or 0)
    account = cluster.add_account(
        endpoint=bridge_proxy.url, callback_url=bridge_callbacks.url(), signing_key="k" * 32
    )
    # every PUT a little slow and every callback answered slowly, as a receiver across
    # the internet does: uploads and callbacks are in flight while the leader hands over
    bridge_proxy.add_rule(Rule(action=Delay(0.3), method="PUT"))
    bridge_callbacks.latency = CALLBACK_LATENCY
    stream = Stream(cluster, account)
    thread = stream.start()
    try:
        wait_for(lambda: stream.created() >= 10 or stream.error, timeout=60, what="a stream")
        # a template change: the RollingUpdate replaces both pods, one at a time
        upgrading = time.monotonic()
        cluster.upgrade(f"operator.podAnnotations.rollout=r{uuid.uuid4().hex[:8]}")
        after = cluster.wait_operator_ready(timeout=180)
        upgraded = time.monotonic()
        stream.finish_after(AFTER_ROLLOUT)
        thread.join(timeout=STREAM_LIMIT * PACE + 120)
    finally:
        stream.abort()
        thread.join(timeout=60)
    rolled = time.monotonic()
    if stream.error is not None:
        raise stream.error
    assert not thread.is_alive(), "the stream ended"
    new_pods = {p.metadata.uid for p in cluster.operator_pods()}
    assert len(new_pods) == 2 and not new_pods & old_pods, "both replicas were replaced"

    # the Lease went from a replica of the old template to one of the new, while the
    # stream was running on both sides of the handover
    lease = _lease(cluster)
    assert lease.holder_identity == after.metadata.name != before.metadata.name
    assert int(lease.lease_transitions or 0) > transitions
    seen = [h for h in stream.holders if h]
    assert seen[0] == before.metadata.name and seen[-1] == after.metadata.name, seen

    names = list(stream.data)

    def all_delivered() -> bool:
        found = _statuses(cluster, account.namespace)
        return len(found) == len(names) and all(map(_delivered, found.values()))

    wait_for(
        all_delivered,
        timeout=SETTLE_TIMEOUT,
        interval=1,
        what=f"all {len(names)} recordings Completed and called back",
    )
    settled = time.monotonic()
    # two whole resync passes of the new leader over the settled recordings, nothing left
    # waiting: a late second settlement would have happened by then
    lists = _resync_lists(cluster)
    wait_for(
        lambda: (
            _resync_lists(cluster) >= lists + 2
            and metric(cluster.operator_metrics(), "voicevault_recording_events_waiting") == 0
        ),
        timeout=60,
        what="two resync passes after the last settlement",
    )

    statuses = _statuses(cluster, account.namespace)
    attempts = Counter(int(s.get("attempts") or 0) for s in statuses.values())
    print(
        f"rolling upgrade: {len(names)} recordings (attempts {dict(attempts)}), "
        f"holders {list(dict.fromkeys(seen))}, lease transitions "
        f"{transitions}->{lease.lease_transitions}; helm upgrade + rollout "
        f"{upgraded - upgrading:.1f}s, settled {settled - rolled:.1f}s after the stream, "
        f"test {time.monotonic() - started:.1f}s"
    )
    outcome = check(cluster, account, stream.data, dict.fromkeys(names, NODE_NAME))
    outcome.assert_clean()  # exact bytes, one object each, no media left, no open upload
    assert outcome.phases == Counter(Completed=len(names)), outcome.phases
    objects = cluster.s3.admin_client().list_objects_v2(Bucket=account.s3.bucket)
    assert objects["KeyCount"] == len(names), "one object per recording, nothing else"

    stored = [e for e in cluster.events(account.namespace) if e.reason == "Stored"]
    per_name = Counter(str(e.involved_object.name) for e in stored)
    assert per_name == Counter(dict.fromkeys(names, 1)), "one Stored Event each"
    assert all((e.count or 1) == 1 for e in stored), "no Stored Event posted twice"

    sids = {str(s["sid"]): name for name, s in statuses.items()}
    with bridge_callbacks._lock:
        received = list(bridge_callbacks.received)
    per_sid = Counter(r.params.get("RecordingSid") for r in received)
    doubled = {sids.get(str(sid), sid): n for sid, n in per_sid.items() if n != 1}
    assert not doubled, f"called back more than once across the upgrade: {doubled}"
    assert set(per_sid) == set(sids), "each recording called back"
    assert all(r.params["RecordingStatus"] == "completed" for r in received)
    assert all(s["callbackAttempts"] == 1 for s in statuses.values())
    # both sides of the handover settled some: the old leader before it stopped, the new
    # one the rest (its own count of callbacks sent)
    by_new = metric(cluster.operator_metrics(), "voicevault_callbacks_total", result="delivered")
    assert 0 < by_new < len(names), f"the new leader sent {by_new} of {len(names)} callbacks"
