"""What one stored recording without a callback costs the API on the uploader's side,
through the whole stack (issue #19): the uploader writes Completed with `Stored` in one
PATCH and reads nothing, posts the one Stored Event, and the operator adds no claim."""

from __future__ import annotations

import os

import pytest

from tests.bed.stack import Stack
from tests.support.invariants import metric, wait_metrics_moved
from tests.support.kube import apiserver_request_counts
from voicevault import phases

pytestmark = [pytest.mark.kube, pytest.mark.s3, pytest.mark.slow]

STATUS = ("recordings", "status")


def _count(counts: dict[tuple[str, str, str, str], float], verb: str, code: str = "") -> float:
    """Requests on Recording status by `verb` (with `code` only: answered with it)."""
    return sum(
        v
        for (vb, res, sub, answered), v in counts.items()
        if vb == verb and (res, sub) == STATUS and code in ("", answered)
    )


def test_a_stored_recording_costs_the_uploader_one_patch_and_no_read(live_stack: Stack) -> None:
    account = live_stack.add_account()
    before_api = apiserver_request_counts(live_stack.cp)
    before = live_stack.operator.metrics()
    live_stack.record(account, "call-1", os.urandom(2048))
    live_stack.wait_condition(account.namespace, "recordings", "call-1", "Stored", timeout=90)
    # the pod has ended and the operator has dealt with its outcome (and its watch event)
    after = wait_metrics_moved(
        live_stack,
        before,
        [
            ("voicevault_uploads_total", {"result": "completed"}, 1),
            ("voicevault_uploaded_bytes_total", {}, 2048),
        ],
        timeout=60,
    )
    after_api = apiserver_request_counts(live_stack.cp)

    def operator(verb: str) -> float:
        name, labels = "voicevault_kube_requests_total", {"resource": "recordings/status"}
        return metric(after, name, verb=verb, **labels) - metric(before, name, verb=verb, **labels)

    patches = _count(after_api, "PATCH") - _count(before_api, "PATCH")
    written = _count(after_api, "PATCH", "200") - _count(before_api, "PATCH", "200")
    reads = _count(after_api, "GET") - _count(before_api, "GET")
    # written in all: Pending and Scheduled by the operator, Completed (with Stored) by
    # the uploader, and no settlement claim after it (the operator's 409s, when its
    # intake acts on a stale view, are not writes)
    assert written == 3
    assert patches - operator("patch") == 1, "the uploader's status writes"
    assert reads == 0, "status reads: the operator reads whole objects, the uploader none"

    body = live_stack.get(account.namespace, "recordings", "call-1")
    stored = next(c for c in body["status"]["conditions"] if c["type"] == "Stored")
    assert (stored["status"], stored["reason"]) == ("True", "Uploaded")
    rec = phases.RecordingView.from_body(body)
    outcome = [e for e in live_stack.events(account.namespace) if e.reason == "Stored"]
    assert [e.metadata.name for e in outcome] == [f"call-1.{phases.outcome_key(rec)}"]
    assert outcome[0].reporting_component == "voicevault-uploader"
    assert outcome[0].message == f"stored at {body['status']['mediaUrl']}"
