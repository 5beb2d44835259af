"""status.reason (the REASON column): every phase write says why, or clears a stale why."""

from __future__ import annotations

from datetime import timedelta

from tests.unit.test_recording_rules import NOW, _accepted, _rec, _setting
from voicevault.contract import ErrorCode
from voicevault.operator.recordings import reconcile
from voicevault.operator.settings import SettingView
from voicevault.phases import fatal_failure, requeued, transient_failure, uploading
from voicevault.uploader.errors import fatal
from voicevault.uploader.recordingstatus import completed_patch, failed_patch
from voicevault.uploader.transfer import UploadResult

NOT_READY = SettingView("acct", 1, None, None, None, False, "CredentialNotReady", "no Secret")


def _reason(setting: SettingView | None, **rec: object) -> tuple[str, str | None]:
    decision = reconcile(_rec(**rec), setting, NOW)  # type: ignore[arg-type]
    assert decision.status is not None and "reason" in decision.status
    return decision.status["phase"], decision.status["reason"]


def test_pending_and_cached_say_why() -> None:
    accepted = _accepted()  # written by the first write, the Scheduled one
    assert (accepted["phase"], accepted["reason"]) == ("Pending", "Queued")
    assert _reason(NOT_READY) == ("Pending", "SettingNotReady")
    assert _reason(NOT_READY, created=NOW - timedelta(hours=3)) == ("Cached", "SettingNotReady")
    assert requeued("pod stopped").status["reason"] == "Requeued"
    rec = _rec(_accepted() | {"attempts": 12})
    assert rec.snapshot is not None
    retrying, _ = transient_failure(
        rec.status, rec.snapshot, code=16111, message="x", now=NOW, node="n", jitter=0.0
    )
    cached, _ = transient_failure(
        rec.status | {"firstFailureTime": "2026-11-25T09:00:00Z"},
        rec.snapshot,
        code=16111,
        message="x",
        now=NOW,
        node="n",
    )
    assert (retrying["phase"], retrying["reason"]) == ("Retrying", "TransientError")
    assert (cached["phase"], cached["reason"]) == ("Cached", "RetryWindowOver")


AT = "2026-11-25T12:00:00Z"


def test_local_and_failed_say_why() -> None:
    assert _reason(None) == ("Local", "NoSetting")
    assert _reason(_setting(enabled=False)) == ("Local", "ExternalStorageOff")
    patch, _ = fatal_failure({}, code=16112, message="denied", now=NOW)
    assert patch["reason"] == "FatalError"
    error = fatal(ErrorCode.ACCESS_DENIED, "denied")
    failed = failed_patch(error, {}, AT, media_deleted=True)
    assert failed is not None and failed["reason"] == "FatalError"


def test_phases_that_speak_for_themselves_clear_a_stale_reason() -> None:
    result = UploadResult(media_url="u", key="k", size=1, source_size=1, encryption=None)
    completed, progress = completed_patch(result, {}, AT), uploading({}, 1, 2, AT)
    assert completed is not None and completed["reason"] is None
    assert progress is not None and progress["reason"] is None
