"""Recording: the rules that drive every recording to a safe end. Pure: no I/O here.

`reconcile` looks at one Recording (and the namespace's setting) and says what to do:
patch the status, add or remove the finalizer, queue an upload or a purge on its node,
settle a finished upload (conditions, callback). `after_attempt` turns an uploader pod's
result for one recording into its next status. The controller in `controller.py`
carries the decisions out.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from voicevault.crds.recording import (
    FINALIZER,
    RETRY_ANNOTATION,
    Phase,
    Reason,
    RecordingSpec,
    StorageSnapshot,
)
from voicevault.operator.conditions import condition, find, iso, merge_conditions, parse_time
from voicevault.operator.retrypolicy import RetryPolicy, next_retry
from voicevault.operator.settings import SettingView
from voicevault.operator.sids import recording_sid
from voicevault.operator.snapshot import SnapshotError, take_snapshot
from voicevault.uploader.errors import ErrorCode, failed_summary

EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: str
    message: str


@dataclass(frozen=True)
class QueueRequest:
    """Work for the node's next uploader pod."""

    action: Literal["upload", "purge"]
    due: datetime


@dataclass
class Decision:
    add_finalizer: bool = False
    remove_finalizer: bool = False
    status: dict[str, Any] | None = None  # merge patch of .status
    events: list[Event] = field(default_factory=list)
    queue: QueueRequest | None = None
    unqueue: bool = False
    settle: bool = False  # send the callback and write the final conditions
    owned_by_pod: str | None = None  # an uploader pod has it: the scheduler must know
    waiting_for_setting: bool = False

    @property
    def idle(self) -> bool:
        """Nothing to write, post, queue or check: a settled recording, for instance."""
        return self == Decision()


@dataclass(frozen=True)
class RecordingView:
    """The parts of a Recording body the rules look at."""

    namespace: str
    name: str
    uid: str
    generation: int
    resource_version: str
    created: datetime
    deleting: bool
    finalizers: tuple[str, ...]
    annotations: dict[str, str]
    spec: dict[str, Any]
    status: dict[str, Any]

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> RecordingView:
        meta = body.get("metadata", {})
        return cls(
            namespace=meta.get("namespace", ""),
            name=meta.get("name", ""),
            uid=meta.get("uid", ""),
            generation=int(meta.get("generation") or 1),
            resource_version=str(meta.get("resourceVersion", "")),
            created=parse_time(meta.get("creationTimestamp")) or datetime.now().astimezone(),
            deleting=bool(meta.get("deletionTimestamp")),
            finalizers=tuple(meta.get("finalizers") or ()),
            annotations=dict(meta.get("annotations") or {}),
            spec=dict(body.get("spec") or {}),
            status=dict(body.get("status") or {}),
        )

    @property
    def phase(self) -> Phase | None:
        value = self.status.get("phase")
        try:
            return Phase(value) if value else None
        except ValueError:
            return None

    @property
    def snapshot(self) -> StorageSnapshot | None:
        raw = self.status.get("storage")
        if not raw:
            return None
        try:
            return StorageSnapshot.model_validate(raw)
        except ValidationError:
            return None

    def body_ref(self) -> dict[str, Any]:
        """Enough of the object for an Event to name it."""
        return {
            "metadata": {
                "namespace": self.namespace,
                "name": self.name,
                "uid": self.uid,
                "resourceVersion": self.resource_version,
            }
        }

    @property
    def sid(self) -> str:
        return str(self.status.get("sid") or recording_sid(self.uid))

    @property
    def pod(self) -> str | None:
        upload = self.status.get("upload") or {}
        return upload.get("pod")


def reconcile(rec: RecordingView, setting: SettingView | None, now: datetime) -> Decision:
    """What to do about this Recording now."""
    if rec.deleting:
        return _on_deletion(rec, now)
    decision = Decision(add_finalizer=FINALIZER not in rec.finalizers)
    phase = rec.phase
    if phase is None or (phase is Phase.PENDING and rec.snapshot is None):
        _accept(rec, setting, now, decision)
    elif phase in (Phase.PENDING, Phase.RETRYING) and setting and setting.refuses(rec.snapshot):
        # accepted while the configuration worked, refused by the bucket since: no upload
        # into a known refusal (it would delete the media); wait as a new recording would
        _wait_for_setting(rec, setting, now, decision, {}, window=_window(rec))
        decision.unqueue = True
    elif phase is Phase.PENDING:
        decision.queue = QueueRequest("upload", now)
    elif phase is Phase.RETRYING:
        due = parse_time(rec.status.get("nextRetryTime")) or now
        decision.queue = QueueRequest("upload", due)
    elif phase in (Phase.SCHEDULED, Phase.UPLOADING):
        decision.owned_by_pod = rec.pod
    elif phase in (Phase.CACHED, Phase.FAILED) and _retry_requested(rec):
        _manual_retry(rec, now, decision)
    if phase in (Phase.COMPLETED, Phase.FAILED) and not decision.queue and _needs_settling(rec):
        decision.settle = True
    return decision


def _accept(
    rec: RecordingView, setting: SettingView | None, now: datetime, decision: Decision
) -> None:
    """First sight (or still waiting for the setting): snapshot the setting, or wait."""
    base: dict[str, Any] = {"sid": rec.sid, "observedGeneration": rec.generation, "attempts": 0}
    try:
        spec = RecordingSpec.model_validate(rec.spec)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        decision.status = base | {
            "phase": Phase.FAILED.value,
            "reason": Reason.INVALID_SPEC.value,
            "errorCode": int(ErrorCode.UPLOAD_FAILED),
            "errorClass": "Fatal",
            "errorMessage": f"invalid spec.{where}: {first['msg']}",
            "message": "The Recording's spec is invalid; nothing was uploaded or deleted",
        }
        decision.events.append(Event("Warning", "InvalidSpec", decision.status["errorMessage"]))
        return
    if setting is None or (setting.ready and not setting.enabled):
        why = "no VoiceStorageSetting 'default'" if setting is None else "external storage is off"
        reason = Reason.NO_SETTING if setting is None else Reason.EXTERNAL_STORAGE_OFF
        decision.status = base | {
            "phase": Phase.LOCAL.value,
            "reason": reason.value,
            "message": f"Kept by the platform: {why} in namespace {rec.namespace!r} when created",
        }
        decision.events.append(Event("Normal", "ExternalStorageOff", decision.status["message"]))
        return
    if not setting.ready:
        _wait_for_setting(rec, setting, now, decision, base)
        return
    callback = spec.status_callback.url if spec.status_callback else None
    try:
        snapshot = take_snapshot(setting, spec, rec.sid, callback)
    except SnapshotError as exc:
        _wait_for_setting(rec, setting, now, decision, base, str(exc))
        return
    encrypted = f", encrypted for key {snapshot.public_key_sid}" if snapshot.public_key_sid else ""
    message = f"Queued for upload from node {spec.node_name} to {snapshot.media_url}{encrypted}"
    decision.status = base | {
        "phase": Phase.PENDING.value,
        "reason": Reason.QUEUED.value,
        "storage": snapshot.to_wire(),
        "message": message,
        "errorCode": None,
        "errorClass": None,
        "errorMessage": None,
    }
    decision.events.append(Event("Normal", "Accepted", message))
    decision.queue = QueueRequest("upload", now)


def _wait_for_setting(
    rec: RecordingView,
    setting: SettingView,
    now: datetime,
    decision: Decision,
    base: dict[str, Any],
    problem: str | None = None,
    window: timedelta | None = None,
) -> None:
    """The setting is not ready: wait, for as long as a retry window, then keep it cached."""
    window = window or timedelta(seconds=setting.retry_window_seconds)
    why = problem or f"{setting.reason}: {setting.message}"
    if now >= rec.created + window:
        message = (
            f"The storage setting was not ready for {_human(window)} ({why}); media kept on "
            f"node {rec.spec.get('nodeName')}. Fix the setting, then run `voicevault retry`"
        )
        if rec.status.get("phase") != Phase.CACHED.value:
            decision.status = base | {
                "phase": Phase.CACHED.value,
                "reason": Reason.SETTING_NOT_READY.value,
                "message": message,
            }
            decision.events.append(Event("Warning", "Cached", message))
        return
    message = f"Waiting for VoiceStorageSetting 'default' to be ready ({why})"
    decision.waiting_for_setting = True
    if rec.status.get("message") != message or rec.status.get("phase") != Phase.PENDING.value:
        decision.status = base | {
            "phase": Phase.PENDING.value,
            "reason": Reason.SETTING_NOT_READY.value,
            "message": message,
        }
        decision.events.append(Event("Warning", "SettingNotReady", message))


def _window(rec: RecordingView) -> timedelta | None:
    snapshot = rec.snapshot
    return timedelta(seconds=snapshot.retry_window_seconds) if snapshot else None


def _retry_requested(rec: RecordingView) -> bool:
    asked = rec.annotations.get(RETRY_ANNOTATION)
    return bool(asked) and asked != rec.status.get("retryRequest")


def _manual_retry(rec: RecordingView, now: datetime, decision: Decision) -> None:
    """A person asked: start a fresh retry window (Cached media, or a failed recording)."""
    asked = rec.annotations[RETRY_ANNOTATION]
    if rec.snapshot is None:
        # it never got a snapshot (the setting was not ready): take one now
        decision.status = {
            "retryRequest": asked,
            "phase": None,
            "reason": Reason.MANUAL_RETRY.value,
            "message": "Manual retry",
        }
        decision.events.append(Event("Normal", "ManualRetry", "manual retry requested"))
        return
    node = rec.spec.get("nodeName")
    message = f"Manual retry requested ({RETRY_ANNOTATION}={asked}); queued for node {node}"
    decision.status = {
        "phase": Phase.PENDING.value,
        "reason": Reason.MANUAL_RETRY.value,
        "retryRequest": asked,
        "attempts": 0,
        "firstFailureTime": None,
        "lastFailureTime": None,
        "nextRetryTime": None,
        "errorCode": None,
        "errorClass": None,
        "errorMessage": None,
        "message": message,
        # the next outcome is settled afresh: its own Stored condition and callback
        "conditions": [
            c
            for c in rec.status.get("conditions") or []
            if c.get("type") not in ("Stored", "CallbackDelivered")
        ]
        or None,
        "callbackAttempts": None,
    }
    decision.events.append(Event("Normal", "ManualRetry", message))
    decision.queue = QueueRequest("upload", now)


def _needs_settling(rec: RecordingView) -> bool:
    conditions = rec.status.get("conditions") or []
    if find(conditions, "Stored") is None:
        return True
    return _callback_owed(rec)


def _callback_owed(rec: RecordingView) -> bool:
    """A callback is due and no result is recorded (never sent, or its sender died)."""
    snapshot = rec.snapshot
    if not (snapshot and snapshot.callback_url):
        return False
    delivered = find(rec.status.get("conditions"), "CallbackDelivered")
    return delivered is None or delivered.get("status") == "Unknown"


# -- settling a finished recording -------------------------------------------------------

SENDING = "Sending"  # CallbackDelivered=Unknown: claimed, the callback is on its way


@dataclass(frozen=True)
class Settlement:
    """The claim on a finished recording's settlement, and what its winner does next.

    `status` is written guarded by the resourceVersion the decision was made on, so of
    all the views of one completion (watch event, resync page, a re-read) exactly one
    wins; the Event and the callback belong to the winner only.
    """

    status: dict[str, Any]
    event: Event | None  # the Stored or Failed Event (posted under `event_name`)
    event_name: str
    callback: bool  # the winner sends the status callback
    idempotency_token: str


def outcome_key(rec: RecordingView) -> str:
    """Stable per recording and outcome (a manual retry starts a new outcome)."""
    text = "|".join(
        (
            rec.uid,
            str(rec.status.get("phase")),
            str(rec.status.get("errorCode") or 0),
            str(rec.status.get("retryRequest") or ""),
        )
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def settlement(rec: RecordingView, now: datetime, claimer: str) -> Settlement | None:
    """What settling this Completed or Failed recording writes first; None if nothing."""
    if rec.phase not in (Phase.COMPLETED, Phase.FAILED) or rec.deleting:
        return None
    conditions = rec.status.get("conditions") or []
    updates = []
    event = None
    if find(conditions, "Stored") is None:
        if rec.phase is Phase.COMPLETED:
            message = f"stored at {rec.status.get('mediaUrl')}"
            updates.append(condition("Stored", True, "Uploaded", message, now, rec.generation))
            event = Event("Normal", "Stored", message)
        else:
            message = f"error {rec.status.get('errorCode')}: {rec.status.get('errorMessage')}"
            updates.append(condition("Stored", False, "UploadFailed", message, now, rec.generation))
            event = Event("Warning", "Failed", message)
    callback = _callback_owed(rec)
    if callback:
        url = rec.snapshot.callback_url if rec.snapshot else None
        updates.append(
            condition(
                "CallbackDelivered",
                "Unknown",
                SENDING,
                f"sending the status callback to {url} (operator {claimer})",
                now,
                rec.generation,
            )
        )
    if not updates:
        return None
    key = outcome_key(rec)
    outcome = "completed" if rec.phase is Phase.COMPLETED else "failed"
    return Settlement(
        status={"conditions": merge_conditions(conditions, updates)},
        event=event,
        event_name=f"{rec.name}.{key}",
        callback=callback,
        idempotency_token=f"{rec.sid}-{outcome}-{key}",
    )


def _on_deletion(rec: RecordingView, now: datetime) -> Decision:
    decision = Decision()
    if FINALIZER not in rec.finalizers:
        return decision
    phase = rec.phase
    if phase in (Phase.SCHEDULED, Phase.UPLOADING):
        decision.owned_by_pod = rec.pod  # let the pod finish; its outcome decides
        return decision
    if rec.snapshot is None or phase not in (Phase.PENDING, Phase.RETRYING, Phase.CACHED):
        decision.remove_finalizer = True
        decision.unqueue = True
        return decision
    decision.queue = QueueRequest("purge", now)
    return decision


# -- after an attempt ------------------------------------------------------------------------


def transient_failure(
    status: dict[str, Any],
    snapshot: StorageSnapshot,
    *,
    code: int,
    message: str,
    now: datetime,
    node: str,
    jitter: float | None = None,
) -> tuple[dict[str, Any], Event]:
    """The status after a transient failure: Retrying with a next time, or Cached."""
    first = parse_time(status.get("firstFailureTime")) or now
    failures = int(status.get("attempts") or 1)
    policy = RetryPolicy(
        window=timedelta(seconds=snapshot.retry_window_seconds),
        initial_backoff=timedelta(seconds=snapshot.initial_backoff_seconds),
        max_backoff=timedelta(
            seconds=max(snapshot.max_backoff_seconds, snapshot.initial_backoff_seconds)
        ),
    )
    fraction = random.random() if jitter is None else jitter  # noqa: S311 - jitter, not crypto
    decision = next_retry(
        policy, first_failure_at=first, failures=max(1, failures), now=now, jitter=lambda: fraction
    )
    patch: dict[str, Any] = {
        "errorCode": code,
        "errorClass": "Transient",
        "errorMessage": message[:1024],
        "firstFailureTime": iso(first),
        "lastFailureTime": iso(now),
    }
    if decision.give_up:
        text = (
            f"Retried for {_human(policy.window)} without success; media kept on node {node}. "
            f"Run `voicevault retry` or annotate {RETRY_ANNOTATION} to try again"
        )
        patch |= {
            "phase": Phase.CACHED.value,
            "reason": Reason.RETRY_WINDOW_OVER.value,
            "nextRetryTime": None,
            "message": text,
        }
        return patch, Event("Warning", "Cached", f"{text} (last error {code}: {message})")
    assert decision.next_attempt_at is not None
    text = f"Transient error {code}: {message}; next attempt at {iso(decision.next_attempt_at)}"
    patch |= {
        "phase": Phase.RETRYING.value,
        "reason": Reason.TRANSIENT_ERROR.value,
        "nextRetryTime": iso(decision.next_attempt_at),
        "message": text,
    }
    return patch, Event("Warning", "UploadFailed", text)


def requeued(reason: str) -> dict[str, Any]:
    """Back to Pending without counting a failure (the pod never got to it)."""
    return {"phase": Phase.PENDING.value, "reason": Reason.REQUEUED.value, "message": reason}


def fatal_failure(
    status: dict[str, Any], *, code: int, message: str, now: datetime
) -> tuple[dict[str, Any], Event]:
    patch = {
        "phase": Phase.FAILED.value,
        "reason": Reason.FATAL_ERROR.value,
        "errorCode": code,
        "errorClass": "Fatal",
        "errorMessage": message[:1024],
        "firstFailureTime": status.get("firstFailureTime") or iso(now),
        "lastFailureTime": iso(now),
        "nextRetryTime": None,
        # the uploader pod dealt with the media; this writer cannot tell what it found
        "message": failed_summary(code, media_deleted=None),
    }
    return patch, Event("Warning", "Failed", f"fatal error {code}: {message}")


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m" if minutes else f"{hours}h"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
