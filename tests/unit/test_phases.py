"""The phase machine (phases.py): every transition, and every kind of attempt result.

Each transition is a pure function of a RecordingView (or a status) and a fixed clock,
so each test states the status a writer sends, field by field where it matters.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tests.unit.test_recording_rules import NOW, _accepted, _completed_with_callback, _rec
from voicevault import phases
from voicevault.contract import BatchOutcome, ItemResult, ResultKind
from voicevault.crds.recording import FINALIZER, RETRY_ANNOTATION, Phase
from voicevault.operator import pods

POD = "voicevault-upload-node-a-1"


def _merged(status: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """`patch` applied as the apiserver applies a merge patch: null removes the field."""
    out = dict(status)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = _merged({}, value) if isinstance(value, dict) else value
    return out


def _scheduled(**extra: Any) -> phases.RecordingView:
    """An accepted recording, claimed by POD for its first attempt."""
    status = _merged(_accepted(), phases.scheduled("upload", 0, POD).status) | extra
    return _rec(status)


# -- the view -----------------------------------------------------------------------------


def test_a_view_parses_phase_and_snapshot_once_and_tolerates_junk() -> None:
    rec = _rec(_accepted())
    assert rec.phase is Phase.PENDING
    assert rec.snapshot is not None and rec.snapshot.bucket == "recordings"
    junk = _rec({"phase": "Exploded", "storage": {"bucket": 3}})
    assert junk.phase is None and junk.snapshot is None
    assert _rec().snapshot is None and _rec().attempts == 0 and _rec().node == "node-a"


# -- first sight --------------------------------------------------------------------------


def test_accepted_freezes_the_snapshot_and_clears_old_errors() -> None:
    rec = _rec()
    snapshot = _rec(_accepted()).snapshot
    assert snapshot is not None
    status = phases.accepted_fields(rec.sid, rec.generation, rec.node, snapshot)
    assert status["phase"] == "Pending" and status["reason"] == "Queued"
    assert status["attempts"] == 0 and status["sid"] == rec.sid
    assert status["storage"] == snapshot.to_wire()
    assert status["errorCode"] is None and status["errorMessage"] is None
    assert "from node node-a to " + snapshot.media_url in status["message"]


def test_invalid_spec_fails_fatally_without_a_snapshot() -> None:
    status, event = phases.invalid_spec(_rec(), "invalid spec.accountSid: bad")
    assert (status["phase"], status["reason"], status["errorClass"]) == (
        "Failed",
        "InvalidSpec",
        "Fatal",
    )
    assert status["errorCode"] == 16111 and "storage" not in status
    assert event == phases.Event("Warning", "InvalidSpec", "invalid spec.accountSid: bad")


@pytest.mark.parametrize(
    ("no_setting", "reason"), [(True, "NoSetting"), (False, "ExternalStorageOff")]
)
def test_kept_local_says_which_setting_kept_it(no_setting: bool, reason: str) -> None:
    status, event = phases.kept_local(_rec(), no_setting=no_setting)
    assert (status["phase"], status["reason"]) == ("Local", reason)
    assert event is not None and event.type == "Normal"


def test_waiting_for_the_setting_is_written_once() -> None:
    first = phases.waiting_for_setting(_rec(), "CredentialNotReady: no Secret", first=True)
    assert first is not None
    assert first.status["phase"] == "Pending" and first.status["reason"] == "SettingNotReady"
    assert first.status["attempts"] == 0  # a first write sets the sid and counters too
    again = phases.waiting_for_setting(
        _rec(first.status), "CredentialNotReady: no Secret", first=True
    )
    assert again is None
    later = phases.waiting_for_setting(_rec(_accepted()), "refused", first=False)
    assert later is not None and "attempts" not in later.status and "sid" not in later.status


def test_cached_for_the_setting_after_a_whole_window() -> None:
    cached = phases.cached_for_setting(_rec(), timedelta(hours=2), "no Secret", first=True)
    assert cached is not None and cached.status["phase"] == "Cached"
    assert "not ready for 2h (no Secret)" in cached.status["message"]
    assert (
        phases.cached_for_setting(_rec(cached.status), timedelta(hours=2), "x", first=True) is None
    )


# -- queued -> pod ------------------------------------------------------------------------


def test_scheduled_counts_the_attempt_and_claims_the_recording_for_the_pod() -> None:
    status, event = phases.scheduled("upload", 2, POD)
    assert status["phase"] == "Scheduled" and status["attempts"] == 3
    assert status["upload"] == {
        "pod": POD,
        "startedAt": None,
        "bytesSent": None,
        "bytesTotal": None,
    }
    assert "(attempt 3)" in status["message"]
    assert event is None  # the uploader pod's own Event names its batch
    purge, none = phases.scheduled("purge", 2, POD)
    assert "phase" not in purge and "attempts" not in purge and purge["upload"]["pod"] == POD
    assert none is None  # a deleted recording's purge posts no Event


@pytest.mark.parametrize(
    ("status", "attempts_queued", "still_open"),
    [
        ({}, 0, True),  # queued at first sight, nothing written yet
        ({"phase": "Retrying", "attempts": 1}, 1, True),
        ({"phase": "Cached", "attempts": 1, "message": "a manual retry"}, 1, True),
        ({"phase": "Retrying", "attempts": 2}, 1, False),  # attempted since it was handed out
        ({"phase": "Scheduled", "attempts": 2, "upload": {"pod": "other"}}, 1, False),
        ({"phase": "Uploading", "attempts": 2, "upload": {"pod": "other"}}, 1, False),
        ({"phase": "Completed", "attempts": 1}, 1, False),
        ({"phase": "Failed", "attempts": 1}, 1, False),
    ],
)
def test_an_unwritten_claim_stays_open_until_someone_claims_or_settles_the_recording(
    status: dict[str, Any], attempts_queued: int, still_open: bool
) -> None:
    claim, _ = phases.scheduled("upload", attempts_queued, POD)
    assert phases.claim_open(status, claim) is still_open


# -- in the pod ---------------------------------------------------------------------------

T1, T2, T3, T4, T5, T6 = (f"2026-11-25T12:00:0{i}Z" for i in range(1, 7))


def test_the_pod_writes_progress_then_its_outcome_and_never_twice() -> None:
    claimed = _scheduled().status
    progress = phases.uploading(claimed, 5, 10, T1)
    assert progress is not None
    assert progress["upload"] == {"pod": POD, "startedAt": T1, "bytesSent": 5, "bytesTotal": 10}
    later = phases.uploading(_merged(claimed, progress), 10, 10, T2)
    assert later is not None and later["upload"]["startedAt"] == T1  # kept from the first
    done = phases.completed(
        claimed | progress, media_url="u", stored=12, source_size=10, encryption=None, at=T3
    )
    assert done is not None and done["phase"] == "Completed" and done["size"] == 10
    assert done["upload"]["bytesSent"] == done["upload"]["bytesTotal"] == 12
    assert done["completionTime"] == T3 and done["nextRetryTime"] is None
    finished = claimed | done
    assert phases.uploading(finished, 1, 2, T4) is None
    assert (
        phases.completed(finished, media_url="u", stored=1, source_size=1, encryption=None, at=T5)
        is None
    )
    assert (
        phases.failed(finished, code=1, error_class="Fatal", message="m", media_deleted=True, at=T6)
        is None
    )


def test_failed_by_the_pod_says_what_happened_to_the_media() -> None:
    status = {"firstFailureTime": "earlier"}
    deleted = phases.failed(
        status, code=16112, error_class="Fatal", message="x" * 2000, media_deleted=True, at=T6
    )
    assert deleted is not None and deleted["phase"] == "Failed"
    assert deleted["firstFailureTime"] == "earlier" and deleted["lastFailureTime"] == T6
    assert len(deleted["errorMessage"]) == 1024
    assert "local media deleted" in deleted["message"]
    kept = phases.failed(
        {}, code=16112, error_class="Fatal", message="m", media_deleted=False, at=T6
    )
    assert kept is not None and "nothing was deleted" in kept["message"]
    assert kept["firstFailureTime"] == T6


def test_the_outcome_write_carries_stored_so_settling_without_a_callback_writes_nothing() -> None:
    rec = _scheduled()
    done = phases.completed(
        rec.status, media_url="s3://b/k", stored=3, source_size=3, encryption=None, at=T1
    )
    assert done is not None
    (stored,) = done["conditions"]
    assert (stored["type"], stored["status"], stored["reason"], stored["message"]) == (
        "Stored",
        "True",
        "Uploaded",
        "stored at s3://b/k",
    )
    completed = _rec(_merged(rec.status, done))
    assert phases.settlement(completed, NOW, "op") is None  # no callback: nothing more
    assert not phases.needs_settling(completed)
    # a lost answer, written again over what the first write left: nothing the second time
    assert (
        phases.completed(
            completed.status, media_url="s3://b/k", stored=3, source_size=3, encryption=None, at=T2
        )
        is None
    )


def test_a_failed_outcome_carries_stored_false_with_the_error() -> None:
    rec = _scheduled(conditions=[{"type": "MetadataStored", "status": "False", "reason": "x"}])
    patch = phases.failed(
        rec.status, code=16112, error_class="Fatal", message="denied", media_deleted=True, at=T1
    )
    assert patch is not None
    by_type = {c["type"]: c for c in patch["conditions"]}
    assert set(by_type) == {"MetadataStored", "Stored"}  # the earlier condition is kept
    stored = by_type["Stored"]
    assert (stored["status"], stored["reason"], stored["message"]) == (
        "False",
        "UploadFailed",
        "error 16112: denied",
    )
    assert phases.settlement(_rec(_merged(rec.status, patch)), NOW, "op") is None


def test_the_outcome_event_is_named_as_settlement_names_it() -> None:
    """The pod's Event and the one the operator would post are one Event (one name)."""
    for status in (_scheduled().status, _scheduled(retryRequest="again").status):
        done = phases.completed(
            status, media_url="s3://b/k", stored=1, source_size=1, encryption=None, at=T1
        )
        assert done is not None
        named = phases.outcome_event(_rec().uid, "call-1", status, done)
        after = _rec(_merged(status, done))
        assert named.name == f"call-1.{phases.outcome_key(after)}"
        assert named.event == phases.Event("Normal", "Stored", "stored at s3://b/k")
    failed = phases.failed(
        _scheduled().status, code=16105, error_class="Fatal", message="m", media_deleted=True, at=T1
    )
    assert failed is not None
    named = phases.outcome_event(_rec().uid, "call-1", _scheduled().status, failed)
    assert named.event == phases.Event("Warning", "Failed", "error 16105: m")
    assert named.name == f"call-1.{phases.outcome_key(_rec(_merged(_scheduled().status, failed)))}"
    stored = phases.completed(
        _scheduled().status, media_url="u", stored=1, source_size=1, encryption=None, at=T1
    )
    assert stored is not None
    assert (
        named.name != phases.outcome_event(_rec().uid, "call-1", _scheduled().status, stored).name
    )


def test_a_pending_metadata_document_writes_no_stored_condition() -> None:
    patch = phases.metadata_pending(
        _scheduled().status,
        media_url="s3://b/k",
        source_size=1,
        encryption=None,
        metadata_url="s3://b/k.json",
        fatal=False,
        code=16111,
        message="503",
        at=T1,
    )
    assert patch is not None
    assert [c["type"] for c in patch["conditions"]] == ["MetadataStored"]


def test_the_pod_is_told_only_what_its_writes_read() -> None:
    status = _scheduled(firstFailureTime=T1, retryRequest="r").status
    base = phases.pod_base(status)
    assert set(base) == {"phase", "upload", "firstFailureTime", "retryRequest"}
    assert base["upload"]["pod"] == POD


# -- after the pod: every kind of result --------------------------------------------------


def _after(
    result: ItemResult | None, why: str | None = None, rec: phases.RecordingView | None = None
) -> phases.AfterAttempt:
    return phases.after_attempt(
        rec or _scheduled(), result, why, node="node-a", now=NOW, jitter=0.0
    )


@pytest.mark.parametrize("kind", ["completed", "fatal"])
def test_an_outcome_the_pod_wrote_itself_is_only_counted(kind: ResultKind) -> None:
    assert _after(ItemResult(kind=kind)) == phases.AfterAttempt(None, kind)


def test_a_recording_already_finished_is_counted_as_recorded() -> None:
    done = _scheduled(phase="Completed")
    assert _after(None, "the uploader pod disappeared", done) == phases.AfterAttempt(
        None, "recorded"
    )


def test_a_fatal_error_the_pod_could_not_write_is_written_for_it() -> None:
    after = _after(ItemResult(kind="fatal-unrecorded", error_code=16104, message="bad key"))
    assert after.counted == "fatal" and after.transition is not None
    status, event = after.transition
    assert (status["phase"], status["errorCode"], status["errorClass"]) == (
        "Failed",
        16104,
        "Fatal",
    )
    assert status["message"] == "Fatal error 16104; no retries"  # it cannot tell about media
    assert event is not None and event.message == "fatal error 16104: bad key"
    no_code = _after(ItemResult(kind="fatal-unrecorded", message="m")).transition
    assert no_code is not None and no_code.status["errorCode"] == 16111


def test_skipped_and_unstarted_recordings_go_back_to_the_queue_uncounted() -> None:
    skipped = _after(ItemResult(kind="skipped"))
    assert skipped.counted is None and skipped.transition is not None
    assert skipped.transition.status == {
        "phase": "Pending",
        "reason": "Requeued",
        "message": "Back in the queue: the uploader pod stopped before this recording",
    }
    assert _after(None) == skipped  # the pod ended normally before reaching it


@pytest.mark.parametrize("kind", ["transient", "completed-unrecorded"])
def test_a_transient_result_retries_with_the_pods_code_and_releases_the_pod(
    kind: ResultKind,
) -> None:
    after = _after(ItemResult(kind=kind, error_code=16112, message="SlowDown"))
    assert after.counted == "transient" and after.transition is not None
    status, event = after.transition
    assert status["phase"] == "Retrying" and status["errorCode"] == 16112
    assert status["upload"] is None and status["nextRetryTime"] == "2026-11-25T12:00:15Z"
    assert event is not None and event.reason == "UploadFailed" and "SlowDown" in event.message


def test_a_pod_that_ended_badly_is_a_lost_attempt_with_its_reason() -> None:
    after = _after(None, "the uploader pod was Evicted: low on disk")
    assert after.counted == "lost" and after.transition is not None
    assert after.transition.status["errorMessage"] == "the uploader pod was Evicted: low on disk"
    uploading = _scheduled(phase="Uploading")  # it had started: not a requeue
    lost = _after(None, None, uploading).transition
    assert lost is not None and lost.status["errorMessage"] == phases.UNSTARTED


def test_a_purge_result_on_an_upload_counts_as_a_transient_failure() -> None:
    after = _after(ItemResult(kind="purged"), "why")
    assert after.counted == "transient" and after.transition is not None
    assert after.transition.status["errorMessage"] == "why"


def test_a_last_failure_past_the_window_caches_the_media() -> None:
    late = _scheduled(firstFailureTime="2026-11-25T09:00:00Z", attempts=7)
    after = _after(ItemResult(kind="transient", message="x"), rec=late)
    assert after.transition is not None and after.transition.status["phase"] == "Cached"
    assert after.transition.status["upload"] is None


def test_without_a_snapshot_nothing_is_written_or_counted() -> None:
    assert _after(ItemResult(kind="transient"), rec=_rec({"phase": "Scheduled"})) == (
        phases.AfterAttempt(None, None)
    )


def test_pod_lost_and_failed_before_pod() -> None:
    lost = phases.pod_lost(_scheduled(), NOW, jitter=0.0)
    assert lost is not None and lost.status["upload"] is None
    assert lost.status["errorMessage"] == f"uploader pod {POD} is gone without a result"
    assert phases.pod_lost(_rec({"phase": "Scheduled"}), NOW) is None
    queued = _rec(_accepted() | {"attempts": 2})
    early = phases.failed_before_pod(queued, "node node-a does not exist", node="node-a", now=NOW)
    assert early is not None and early.status["attempts"] == 3
    assert early.status["phase"] == "Retrying"
    assert phases.failed_before_pod(_scheduled(), "m", node="n", now=NOW) is None


# -- reading an ended pod (the result above comes from here) -------------------------------


def _pod(phase: str, terminated: dict[str, Any] | None, **status: Any) -> dict[str, Any]:
    states = [{"state": {"terminated": terminated}}] if terminated is not None else []
    return {"status": {"phase": phase, "containerStatuses": states, **status}}


GOOD = BatchOutcome(results=[ItemResult(kind="completed")]).encode()


def test_pod_outcome_for_every_way_a_pod_ends() -> None:
    assert pods.outcome(None, "gone") == (None, "gone")
    outcome, why = pods.outcome(_pod("Succeeded", {"exitCode": 0, "message": GOOD}), None)
    assert why is None and outcome is not None and outcome.results[0] is not None
    sigterm, why = pods.outcome(_pod("Failed", {"exitCode": 143, "message": GOOD}), None)
    assert why is None and sigterm is not None  # stopped by the operator, reported
    _, why = pods.outcome(_pod("Failed", {"exitCode": 0, "message": GOOD}), "timed out")
    assert why == "timed out"
    evicted = _pod("Failed", None, reason="Evicted", message="low on disk")
    assert pods.outcome(evicted, None) == (None, "the uploader pod was Evicted: low on disk")
    crashed = pods.outcome(_pod("Failed", {"exitCode": 1, "reason": "Error"}), None)
    assert crashed == (None, "the uploader pod exited with code 1 (Error)")
    silent = pods.outcome(_pod("Succeeded", {"exitCode": 0, "message": "not ours"}), None)
    assert silent == (None, "the uploader pod ended without reporting a result")


# -- a person asks, finished, deleted ------------------------------------------------------


def test_retry_requested_starts_a_fresh_window_and_a_new_outcome() -> None:
    failed = _accepted() | {
        "phase": "Failed",
        "attempts": 3,
        "errorCode": 16112,
        "conditions": [{"type": "Stored"}, {"type": "CallbackDelivered"}, {"type": "Other"}],
    }
    rec = _rec(failed, annotations={RETRY_ANNOTATION: "r1"})
    assert phases.retry_wanted(rec)
    status, event = phases.retry_requested(rec)
    assert status["phase"] == "Pending" and status["attempts"] == 0 and status["errorCode"] is None
    assert status["retryRequest"] == "r1" and status["conditions"] == [{"type": "Other"}]
    assert event is not None and event.reason == "ManualRetry"
    assert not phases.retry_wanted(_rec(failed | status, annotations={RETRY_ANNOTATION: "r1"}))
    never = _rec({"phase": "Cached"}, annotations={RETRY_ANNOTATION: "r2"})
    cleared, _ = phases.retry_requested(never)
    assert cleared["phase"] is None  # accepted anew: it never had a snapshot


def test_callback_recorded_only_over_this_operators_claim() -> None:
    done = _rec(_completed_with_callback())
    plan = phases.settlement(done, NOW, "me")
    assert plan is not None
    claimed = _rec(done.status | plan.status)
    patch = phases.callback_recorded(
        claimed, delivered=True, reason="Delivered", message="ok", attempts=2, now=NOW
    )
    assert patch is not None and patch["callbackAttempts"] == 2
    delivered = [c for c in patch["conditions"] if c["type"] == "CallbackDelivered"]
    assert [(c["status"], c["reason"]) for c in delivered] == [("True", "Delivered")]
    assert [c["type"] for c in patch["conditions"]] == ["CallbackDelivered", "Stored"]
    assert (
        phases.callback_recorded(
            done, delivered=True, reason="Delivered", message="ok", attempts=1, now=NOW
        )
        is None
    )


@pytest.mark.parametrize(
    ("status", "finalizers", "what"),
    [
        ({"phase": "Scheduled"}, (FINALIZER,), "wait-for-pod"),
        ({"phase": "Uploading"}, (FINALIZER,), "wait-for-pod"),
        ({"phase": "Completed"}, (FINALIZER,), "release"),
        ({"phase": "Pending"}, (FINALIZER,), "release"),  # no snapshot: nothing uploaded
        ({"phase": "Pending"}, (), "nothing"),
    ],
)
def test_deletion(status: dict[str, Any], finalizers: tuple[str, ...], what: str) -> None:
    assert phases.deletion(_rec(status, finalizers=finalizers, deleting=True)) == what


@pytest.mark.parametrize("phase", ["Pending", "Retrying", "Cached"])
def test_deletion_purges_media_still_on_the_node(phase: str) -> None:
    rec = _rec(_accepted() | {"phase": phase}, deleting=True)
    assert phases.deletion(rec) == "purge"
