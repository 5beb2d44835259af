"""The Recording intake under a backlog, against a real apiserver.

Past `INTAKE_BODIES` waiting events, a new recording is queued by name only and read again
when its turn comes. These tests drive the recordings controller's intake directly (no operator
process): what is queued, and what a re-read returns when the object is there, gone, or
replaced by another of the same name; and that a deleted recording leaves no state behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client as k8s

from tests.support import samples
from tests.support.kube import create
from voicevault import API_GROUP, API_VERSION
from voicevault.operator import metrics, recordingcontroller
from voicevault.operator.config import OperatorConfig
from voicevault.operator.controller import Controller
from voicevault.operator.kube import Kube

pytestmark = [pytest.mark.kube, pytest.mark.usefixtures("crds")]


@pytest.fixture
def controller(kube_api: Any) -> Iterator[Controller]:
    kube = Kube(kube_api)  # the session's admin client: not closed here
    yield Controller(kube, OperatorConfig())
    kube.close(client=False)


def test_a_backlog_queues_new_recordings_by_name_and_keeps_bodies_of_work_in_flight(
    controller: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recordingcontroller, "INTAKE_BODIES", 1)
    first = {"metadata": {"name": "a", "namespace": "ns", "uid": "u-a"}, "spec": {"x": 1}}
    new = {"metadata": {"name": "b", "namespace": "ns", "uid": "u-b", "labels": {}}, "spec": {}}
    busy = {
        "metadata": {"name": "c", "namespace": "ns", "uid": "u-c"},
        "status": {"phase": "Pending"},
    }
    for body in (first, new, busy):
        controller.recordings.submit(body)

    async def drain() -> list[tuple[str, Any]]:
        return [await controller.recordings.intake.get() for _ in range(3)]

    got = dict(asyncio.run(drain()))
    assert got["u-c"] == ("event", busy)  # in flight: its body, and it went first
    assert got["u-a"] == ("event", first)  # below the limit: its body
    assert got["u-b"] == ("reread", {"metadata": {"namespace": "ns", "name": "b", "uid": "u-b"}})


def test_a_reread_returns_the_current_slim_object_or_nothing_when_gone_or_replaced(
    controller: Controller, kube_api: Any, namespace: str
) -> None:
    created = create(kube_api, "recordings", namespace, samples.recording("call-1"))
    meta = created["metadata"]
    ref = {"metadata": {"namespace": namespace, "name": "call-1", "uid": meta["uid"]}}

    current = asyncio.run(controller.recordings.reread(ref))
    assert current is not None
    assert current["metadata"]["uid"] == meta["uid"]
    assert current["spec"]["mediaPath"] == "2026/11/call-1.wav"
    assert "managedFields" not in current["metadata"]

    api = k8s.CustomObjectsApi(kube_api)
    api.delete_namespaced_custom_object(API_GROUP, API_VERSION, namespace, "recordings", "call-1")
    assert (
        asyncio.run(controller.recordings.reread(ref)) is None
    )  # gone: its DELETED event forgets it

    create(kube_api, "recordings", namespace, samples.recording("call-1"))
    assert asyncio.run(controller.recordings.reread(ref)) is None  # same name, another object


def test_a_deleted_recording_leaves_nothing_behind_in_the_controller(
    controller: Controller, kube_api: Any, namespace: str
) -> None:
    """Deleted before its first phase came back to us: no per-recording state stays (a soak
    that deletes stored recordings would see it as a leak)."""
    created = create(kube_api, "recordings", namespace, samples.recording("call-1"))
    uid = created["metadata"]["uid"]
    asyncio.run(controller.recordings.on_recording(created))  # no setting here: the phase is Local
    assert uid in controller.recordings.accepted and uid in controller.recordings.phases

    controller.recordings.forget(created)  # its DELETED event
    assert uid not in controller.recordings.accepted
    assert uid not in controller.recordings.phases
    assert all(uid not in waiting for waiting in controller.recordings.waiting.values())
    assert controller.probe()["recordings"] == 0


def test_a_resync_counts_settled_recordings_in_the_phase_gauge(
    controller: Controller, kube_api: Any, namespace: str
) -> None:
    """After a restart (or on a new leader) no watch event brings the recordings settled
    before it: the first pass over all of them is what counts them."""
    create(kube_api, "recordings", namespace, samples.recording("settled"))
    k8s.CustomObjectsApi(kube_api).patch_namespaced_custom_object_status(
        API_GROUP,
        API_VERSION,
        namespace,
        "recordings",
        "settled",
        {"status": {"phase": "Completed", "mediaUrl": "https://example.invalid/x.wav"}},
    )
    before = metrics.sample("voicevault_recordings", phase="Completed")

    asyncio.run(controller.recordings.resync_once(everything=True))

    assert metrics.sample("voicevault_recordings", phase="Completed") == before + 1


def test_a_view_from_before_its_scheduled_write_is_not_queued_again(
    controller: Controller, kube_api: Any, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resync page or a late echo of the finalizer write brings a recording without a
    phase after the scheduler claimed it for a pod: queued again, it could only meet a
    409 when its turn came (what the 409s of #19's bursts were)."""
    created = create(kube_api, "recordings", namespace, samples.recording("claimed"))
    meta = created["metadata"]
    now = datetime.now(UTC)
    entry = samples.queue_entry(
        meta["uid"],
        "node-a",
        now,
        namespace=namespace,
        name="claimed",
        resource_version=meta["resourceVersion"],
        unwritten=True,
    )
    carried: list[str] = []

    async def carry_out(rec: Any, body: Any, decision: Any) -> None:
        carried.append(rec.resource_version)

    monkeypatch.setattr(controller.recordings, "_carry_out", carry_out)
    scheduler = controller.scheduler
    scheduler.enqueue(entry)
    assert scheduler._take("node-a", now) == [entry]
    asyncio.run(controller.recordings.on_recording(created))  # an echo while it is marked
    assert asyncio.run(scheduler._mark_scheduled(entry, "vv-upload-x"))
    asyncio.run(controller.recordings.on_recording(created))  # the view from before, later
    assert carried == []
    scheduler._release_claims([entry])  # its pod reported: a view without a phase counts again
    asyncio.run(controller.recordings.on_recording(created))
    assert carried == [meta["resourceVersion"]]
