"""The Recording rules (operator/recordings.py, phases.py): pure decisions, fixed clocks."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.support import samples
from voicevault import phases
from voicevault.crds.recording import FINALIZER, RETRY_ANNOTATION
from voicevault.operator import settings
from voicevault.operator.recordings import reconcile
from voicevault.operator.settings import CredentialView, SettingView
from voicevault.phases import RecordingView, settlement, transient_failure

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
UID = "0a1b2c3d-4e5f-6789-abcd-ef0123456789"
CREDENTIAL = CredentialView(
    "acct", "s3-writer", "CR" + "1" * 32, True, "ok", "keys", "A", "B", None
)


def _setting(**storage: Any) -> SettingView:
    body = samples.setting(**storage)
    evaluation = settings.evaluate("acct", body["spec"], CREDENTIAL)
    return SettingView(
        "acct",
        3,
        evaluation.spec,
        evaluation.location,
        evaluation.public_key_sid,
        evaluation.ready,
        evaluation.reason,
        evaluation.message,
    )


def _rec(
    status: dict[str, Any] | None = None,
    *,
    finalizers: tuple[str, ...] = (FINALIZER,),
    deleting: bool = False,
    annotations: dict[str, str] | None = None,
    created: datetime = NOW,
) -> RecordingView:
    body = samples.recording()
    return RecordingView(
        namespace="acct",
        name="call-1",
        uid=UID,
        generation=1,
        resource_version="7",
        created=created,
        deleting=deleting,
        finalizers=finalizers,
        annotations=annotations or {},
        spec=body["spec"],
        status=status or {},
    )


def _accepted(setting: SettingView | None = None) -> dict[str, Any]:
    """The accepted status a new recording's first write (Scheduled) carries."""
    rec = _rec()
    decision = reconcile(rec, setting or _setting(), NOW)
    assert decision.status is None and decision.queue is not None
    assert decision.queue.snapshot is not None
    return phases.accepted_fields(rec.sid, rec.generation, rec.node, decision.queue.snapshot)


def test_new_recording_gets_finalizer_and_is_queued_with_its_snapshot_unwritten() -> None:
    decision = reconcile(_rec(finalizers=()), _setting(), NOW)
    assert decision.add_finalizer
    assert decision.status is None, "being queued costs no status write of its own"
    status = _accepted()
    assert status["sid"] == "RE" + UID.replace("-", "")
    assert status["phase"] == "Pending"
    storage = status["storage"]
    assert storage["bucket"] == "recordings" and storage["region"] == "eu-west-1"
    assert storage["objectKey"] == f"calls/{samples.ACCOUNT_SID}/{status['sid']}.wav"
    assert (
        storage["mediaUrl"]
        == "https://recordings.s3.eu-west-1.amazonaws.com/" + storage["objectKey"]
    )
    assert (
        decision.queue is not None
        and decision.queue.action == "upload"
        and decision.queue.due == NOW
    )
    assert decision.events == []  # being queued is no outcome: no Event


def test_snapshot_is_frozen_at_creation() -> None:
    first = _accepted(_setting())
    rec = _rec(first)
    changed_setting = _setting(bucketUrl="https://elsewhere.s3.us-west-2.amazonaws.com/new/")
    decision = reconcile(rec, changed_setting, NOW)
    assert decision.status is None, "an accepted recording keeps its snapshot"
    assert decision.queue is not None


def test_the_retry_window_is_the_accounts_or_else_the_platforms() -> None:
    platform = dataclasses.replace(_setting(), default_window_seconds=4 * 3600)
    assert _accepted(platform)["storage"]["retryWindowSeconds"] == 4 * 3600
    assert _accepted(_setting())["storage"]["retryWindowSeconds"] == 7200  # the seed's 2 h
    body = samples.setting()
    body["spec"]["retry"] = {"windowSeconds": 600}
    evaluation = settings.evaluate("acct", body["spec"], CREDENTIAL)
    own = SettingView(
        "acct", 4, evaluation.spec, evaluation.location, None, True, "Ready", "ok",
        default_window_seconds=4 * 3600,
    )  # fmt: skip
    assert _accepted(own)["storage"]["retryWindowSeconds"] == 600


def test_no_setting_or_disabled_means_local() -> None:
    for setting in (None, _setting(enabled=False)):
        decision = reconcile(_rec(), setting, NOW)
        assert decision.status is not None and decision.status["phase"] == "Local"
        assert decision.queue is None


def test_setting_not_ready_waits_then_caches_after_the_window() -> None:
    not_ready = SettingView("acct", 1, None, None, None, False, "CredentialNotReady", "no Secret")
    decision = reconcile(_rec(), not_ready, NOW)
    assert decision.waiting_for_setting and decision.status is not None
    assert (
        decision.status["phase"] == "Pending" and "CredentialNotReady" in decision.status["message"]
    )
    late = reconcile(_rec(created=NOW - timedelta(hours=3)), not_ready, NOW)
    assert late.status is not None and late.status["phase"] == "Cached"
    assert not late.waiting_for_setting
    longer = dataclasses.replace(not_ready, default_window_seconds=4 * 3600)
    still = reconcile(_rec(created=NOW - timedelta(hours=3)), longer, NOW)
    assert still.status is not None and still.status["phase"] == "Pending"


def test_invalid_spec_fails_without_touching_media() -> None:
    rec = _rec()
    broken = dataclasses.replace(rec, spec={**rec.spec, "accountSid": "nope"})
    decision = reconcile(broken, _setting(), NOW)
    assert decision.status is not None and decision.status["phase"] == "Failed"
    assert "accountSid" in decision.status["errorMessage"]
    assert decision.queue is None


@pytest.mark.parametrize("phase", ["Scheduled", "Uploading"])
def test_in_flight_recordings_belong_to_their_pod(phase: str) -> None:
    decision = reconcile(
        _rec(_accepted() | {"phase": phase, "upload": {"pod": "p1"}}), _setting(), NOW
    )
    assert decision.owned_by_pod == "p1" and decision.queue is None and decision.status is None


def test_retrying_is_queued_for_its_next_time() -> None:
    later = NOW + timedelta(seconds=40)
    status = _accepted() | {
        "phase": "Retrying",
        "nextRetryTime": later.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    decision = reconcile(_rec(status), _setting(), NOW)
    assert decision.queue is not None and decision.queue.due == later


def test_manual_retry_of_cached_starts_a_fresh_window_once() -> None:
    cached = _accepted() | {
        "phase": "Cached",
        "attempts": 9,
        "firstFailureTime": "2026-11-25T09:00:00Z",
    }
    decision = reconcile(_rec(cached, annotations={RETRY_ANNOTATION: "t1"}), _setting(), NOW)
    assert decision.status is not None
    assert decision.status["phase"] == "Pending" and decision.status["attempts"] == 0
    assert decision.status["firstFailureTime"] is None and decision.status["retryRequest"] == "t1"
    assert decision.queue is not None
    handled = cached | {"retryRequest": "t1"}
    again = reconcile(_rec(handled, annotations={RETRY_ANNOTATION: "t1"}), _setting(), NOW)
    assert again.status is None and again.queue is None, "the same request is acted on once"


def test_completed_is_settled_until_conditions_are_written() -> None:
    done = _accepted() | {"phase": "Completed", "mediaUrl": "https://x/y"}
    assert reconcile(_rec(done), _setting(), NOW).settle
    settled = done | {"conditions": [{"type": "Stored", "status": "True"}]}
    assert not reconcile(_rec(settled), _setting(), NOW).settle


def test_only_a_recording_with_nothing_left_to_do_is_idle() -> None:
    """The resync skips idle recordings; every other one must not look idle."""
    stored = [{"type": "Stored", "status": "True"}]
    settled = _accepted() | {"phase": "Completed", "mediaUrl": "https://x/y"}
    assert reconcile(_rec(settled | {"conditions": stored}), _setting(), NOW).idle
    assert reconcile(_rec({"phase": "Local"}), _setting(), NOW).idle
    assert reconcile(_rec(_accepted() | {"phase": "Cached"}), _setting(), NOW).idle
    busy = [
        _rec(settled),  # not settled yet
        _rec(settled | {"conditions": stored}, finalizers=()),  # finalizer missing
        _rec(settled | {"conditions": stored}, deleting=True),  # to release
        _rec(_accepted() | {"phase": "Cached"}, annotations={RETRY_ANNOTATION: "t1"}),
        _rec(_accepted() | {"phase": "Pending"}),
        _rec(_accepted() | {"phase": "Uploading", "upload": {"pod": "p1"}}),
        _rec(),  # new
    ]
    for rec in busy:
        assert not reconcile(rec, _setting(), NOW).idle, rec.status


@pytest.mark.parametrize(
    ("phase", "expected"),
    [
        ("Completed", "release"),
        ("Failed", "release"),
        ("Local", "release"),
        ("Pending", "purge"),
        ("Retrying", "purge"),
        ("Cached", "purge"),
        ("Uploading", "wait"),
    ],
)
def test_deletion(phase: str, expected: str) -> None:
    status = _accepted() | {"phase": phase, "upload": {"pod": "p1"}}
    decision = reconcile(_rec(status, deleting=True), _setting(), NOW)
    if expected == "release":
        assert decision.remove_finalizer and decision.queue is None
    elif expected == "purge":
        assert decision.queue is not None and decision.queue.action == "purge"
        assert not decision.remove_finalizer
    else:
        assert decision.owned_by_pod == "p1" and not decision.remove_finalizer


def test_deleting_a_recording_queued_without_a_status_purges_its_media() -> None:
    """Queued, it has only our finalizer: its media is on the node, so a pod removes it,
    with the setting as it is now (a purge needs only the node, the path, a credential)."""
    decision = reconcile(_rec(deleting=True), _setting(), NOW)
    assert decision.queue is not None and decision.queue.action == "purge"
    assert decision.queue.snapshot is not None and not decision.remove_finalizer
    for unusable in (None, _setting(enabled=False)):
        decision = reconcile(_rec(deleting=True), unusable, NOW)
        assert decision.remove_finalizer and decision.queue is None  # nothing can reach it


def test_the_scheduled_write_carries_the_accepted_fields_of_an_unwritten_recording() -> None:
    accepted = _accepted()
    status, event = phases.scheduled("upload", 0, "pod-1", accepted)
    assert status["phase"] == "Scheduled" and status["reason"] is None
    assert status["storage"] == accepted["storage"] and status["sid"] == accepted["sid"]
    assert status["attempts"] == 1 and status["upload"]["pod"] == "pod-1"
    assert "pod-1" in status["message"] and event is None
    rec = _rec(_merged_status(accepted, status))
    assert rec.snapshot is not None and rec.pod == "pod-1"
    purge, _ = phases.scheduled("purge", 0, "pod-2", accepted)
    assert "storage" not in purge, "a purge claims the pod only"


def _merged_status(*patches: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for patch in patches:
        merged |= patch
    return merged


def test_deleting_without_our_finalizer_does_nothing() -> None:
    decision = reconcile(_rec(_accepted(), finalizers=(), deleting=True), _setting(), NOW)
    assert decision == type(decision)()


def test_transient_failure_backs_off_then_caches_at_the_window_end() -> None:
    rec = _rec(_accepted() | {"attempts": 1})
    snapshot = rec.snapshot
    assert snapshot is not None
    patch, event = transient_failure(
        rec.status, snapshot, code=16111, message="SlowDown", now=NOW, node="n", jitter=0.0
    )
    assert patch["phase"] == "Retrying" and patch["firstFailureTime"] == "2026-11-25T12:00:00Z"
    assert patch["nextRetryTime"] == "2026-11-25T12:00:15Z", "half of the 30 s first backoff"
    assert event is not None and event.reason == "UploadFailed"
    late = rec.status | patch | {"attempts": 12}
    patch2, event2 = transient_failure(
        late,
        snapshot,
        code=16111,
        message="SlowDown",
        now=NOW + timedelta(hours=2),
        node="n",
        jitter=0.5,
    )
    assert patch2["phase"] == "Cached" and patch2["nextRetryTime"] is None
    assert event2 is not None and event2.reason == "Cached"
    assert "media kept on node n" in patch2["message"]


def _completed_with_callback() -> dict[str, Any]:
    done = _accepted() | {"phase": "Completed", "mediaUrl": "https://x/y"}
    done["storage"] = done["storage"] | {"callbackUrl": "https://hooks.example/cb"}
    return done


def test_the_settlement_claim_carries_stored_and_the_callback_in_one_write() -> None:
    done = _completed_with_callback()
    plan = settlement(_rec(done), NOW, "op1")
    assert plan is not None
    by_type = {c["type"]: c for c in plan.status["conditions"]}
    assert by_type["Stored"]["status"] == "True"
    assert by_type["CallbackDelivered"]["status"] == "Unknown"
    assert "op1" in by_type["CallbackDelivered"]["message"]
    assert plan.event is not None and plan.event.reason == "Stored"
    assert plan.callback
    # once the claim is written, the same view of the object has nothing left but the
    # callback (whose sender is known to be this process, or dead)
    claimed = _rec(done | plan.status)
    again = settlement(claimed, NOW, "op2")
    assert again is not None and again.event is None and again.callback
    delivered = [c for c in plan.status["conditions"] if c["type"] != "CallbackDelivered"]
    delivered.append({"type": "CallbackDelivered", "status": "True", "reason": "Delivered"})
    assert settlement(_rec(done | {"conditions": delivered}), NOW, "op1") is None
    assert not reconcile(_rec(done | {"conditions": delivered}), _setting(), NOW).settle


def test_the_outcome_names_its_event_and_token_stably() -> None:
    done = _completed_with_callback()
    first = settlement(_rec(done), NOW, "op1")
    later = settlement(_rec(done), NOW + timedelta(minutes=5), "op2")
    assert first is not None and later is not None
    assert first.event_name == later.event_name, "a re-post after a crash names the same Event"
    assert first.idempotency_token == later.idempotency_token
    assert first.idempotency_token.startswith(done["sid"] + "-completed-")
    failed = done | {"phase": "Failed", "errorCode": 16112}
    other = settlement(_rec(failed), NOW, "op1")
    assert other is not None and other.idempotency_token != first.idempotency_token
    retried = settlement(_rec(failed | {"retryRequest": "t2"}), NOW, "op1")
    assert retried is not None and retried.idempotency_token != other.idempotency_token


def test_a_manual_retry_clears_the_settlement_of_the_previous_outcome() -> None:
    failed = _accepted() | {
        "phase": "Failed",
        "errorCode": 16111,
        "conditions": [{"type": "Stored", "status": "False", "reason": "UploadFailed"}],
    }
    decision = reconcile(_rec(failed, annotations={RETRY_ANNOTATION: "t1"}), _setting(), NOW)
    assert decision.status is not None and decision.status["conditions"] is None


def _refused(setting: SettingView) -> SettingView:
    return dataclasses.replace(
        setting, ready=False, reason="AccessDenied", message="denied", refused=True
    )


def test_a_queued_recording_under_a_refused_setting_waits_then_is_cached() -> None:
    setting = _setting()
    pending = _accepted(setting)
    refused = _refused(setting)
    for phase in ("Pending", "Retrying"):
        held = reconcile(_rec(pending | {"phase": phase}), refused, NOW)
        assert held.queue is None, "no upload into a configuration the bucket refused"
        assert held.waiting_for_setting
        assert held.status is not None and "AccessDenied" in held.status["message"]
        assert "attempts" not in held.status, "waiting is not a failed attempt"
    window = timedelta(seconds=pending["storage"]["retryWindowSeconds"])
    late = reconcile(_rec(pending), refused, NOW + window)
    assert late.status is not None and late.status["phase"] == "Cached"
    assert late.queue is None
    # the refusal is about one bucket and credential: a recording snapshotted for another
    # bucket (the setting changed since) goes ahead
    elsewhere = pending | {"storage": pending["storage"] | {"bucket": "older-bucket"}}
    assert reconcile(_rec(elsewhere), refused, NOW).queue is not None


def test_refusal_comes_from_the_check_or_from_the_recorded_one_of_this_generation() -> None:
    assert settings.refusal((False, "AccessDenied", "no"), {}, 2) == ("AccessDenied", "no")
    assert settings.refusal((False, "BucketUnreachable", "503"), {}, 2) is None, "an outage"
    assert settings.refusal((True, "BucketAcceptsUploads", "ok"), {}, 2) is None
    recorded = {
        "validatedGeneration": 2,
        "conditions": [
            {"type": "Validated", "status": "False", "reason": "NoSuchBucket", "message": "m"}
        ],
    }
    assert settings.refusal(None, recorded, 2) == ("NoSuchBucket", "m")
    assert settings.refusal(None, recorded, 3) is None, "a new generation is checked afresh"
