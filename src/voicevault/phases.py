"""The Recording phase machine: every change of a Recording's status, one pure function each.

Who writes a Recording's status, and with which function here:

    first sight          invalid_spec, kept_local,
                         waiting_for_setting, cached_for_setting   (operator, reconcile)
    queued -> pod        scheduled (+ accepted_fields, the first
                         time)                                     (operator, scheduler)
    in the pod           uploading, completed, metadata_pending,
                         failed                                    (uploader pod)
    after the pod        after_attempt, failed_before_pod          (operator, scheduler)
    pod gone             pod_lost                                  (operator)
    finished             settlement, callback_recorded             (operator)
    a person asks        retry_requested                           (operator, reconcile)
    deleted              deletion (no status: release, purge or wait for the pod)

Each returns the merge patch of `.status` (and the Event that says so); the callers only
write it. No I/O, no clock of its own: the time comes in as an argument.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from voicevault.contract import ErrorCode, ItemResult
from voicevault.crds.recording_names import FINALIZER, RETRY_ANNOTATION, Phase, Reason
from voicevault.operator.conditions import condition, find, iso, merge_conditions, parse_time
from voicevault.operator.retrypolicy import RetryPolicy, next_retry
from voicevault.operator.sids import recording_sid
from voicevault.uploader.errors import failed_summary

if TYPE_CHECKING:
    # the pydantic models: the operator's side needs them, the uploader pod's does not
    # (its start is paid per pod, #19), so they are imported where a snapshot is read
    from voicevault.crds.recording import StorageSnapshot

EventType = Literal["Normal", "Warning"]
TERMINAL = (Phase.COMPLETED.value, Phase.FAILED.value)
SENDING = "Sending"  # CallbackDelivered=Unknown: claimed, the callback is on its way
UNSTARTED = "the uploader pod ended without a result"
MAX_ERROR_MESSAGE = 1024
METADATA_CONDITION = "MetadataStored"


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: str
    message: str


class NamedEvent(NamedTuple):
    """An Event posted under a name of its own: posting it twice creates one Event."""

    name: str
    event: Event


class Transition(NamedTuple):
    """A merge patch of `.status`, and the Event that tells people about it."""

    status: dict[str, Any]
    event: Event | None


@dataclass(frozen=True)
class RecordingView:
    """The parts of a Recording body the rules look at, parsed once per body."""

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
    phase: Phase | None = field(init=False, compare=False)
    snapshot: StorageSnapshot | None = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "phase", _phase(self.status.get("phase")))
        object.__setattr__(self, "snapshot", _snapshot(self.status.get("storage")))

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

    @property
    def node(self) -> str:
        return str(self.spec.get("nodeName", ""))

    @property
    def attempts(self) -> int:
        return int(self.status.get("attempts") or 0)


def _phase(value: Any) -> Phase | None:
    try:
        return Phase(value) if value else None
    except ValueError:
        return None


def _snapshot(raw: Any) -> StorageSnapshot | None:
    if not raw:
        return None
    from pydantic import ValidationError

    from voicevault.crds.recording import StorageSnapshot

    try:
        return StorageSnapshot.model_validate(raw)
    except ValidationError:
        return None


# -- first sight -------------------------------------------------------------------------------


def _first(rec: RecordingView) -> dict[str, Any]:
    return {"sid": rec.sid, "observedGeneration": rec.generation, "attempts": 0}


def invalid_spec(rec: RecordingView, detail: str) -> Transition:
    """Failed at once: the spec cannot be uploaded, and nothing was touched."""
    status = _first(rec) | {
        "phase": Phase.FAILED.value,
        "reason": Reason.INVALID_SPEC.value,
        "errorCode": int(ErrorCode.UPLOAD_FAILED),
        "errorClass": "Fatal",
        "errorMessage": detail,
        "message": "The Recording's spec is invalid; nothing was uploaded or deleted",
    }
    return Transition(status, Event("Warning", "InvalidSpec", detail))


def kept_local(rec: RecordingView, *, no_setting: bool) -> Transition:
    """Local: the namespace has no setting, or it turns external storage off."""
    why = "no VoiceStorageSetting 'default'" if no_setting else "external storage is off"
    reason = Reason.NO_SETTING if no_setting else Reason.EXTERNAL_STORAGE_OFF
    message = f"Kept by the platform: {why} in namespace {rec.namespace!r} when created"
    status = _first(rec) | {"phase": Phase.LOCAL.value, "reason": reason.value, "message": message}
    return Transition(status, Event("Normal", "ExternalStorageOff", message))


def accepted_fields(
    sid: str, generation: int, node: str, snapshot: StorageSnapshot
) -> dict[str, Any]:
    """The status of an accepted recording, from what its queue entry keeps. Not written
    on its own when the recording goes straight into its node's queue: it rides on the
    Scheduled write (`scheduled(..., first=...)`), one write instead of two. No Event: one
    Normal Event per outcome (README)."""
    encrypted = f", encrypted for key {snapshot.public_key_sid}" if snapshot.public_key_sid else ""
    message = f"Queued for upload from node {node} to {snapshot.media_url}{encrypted}"
    return {
        "sid": sid,
        "observedGeneration": generation,
        "attempts": 0,
        "phase": Phase.PENDING.value,
        "reason": Reason.QUEUED.value,
        "storage": snapshot.to_wire(),
        "message": message,
        "errorCode": None,
        "errorClass": None,
        "errorMessage": None,
    }


def waiting_for_setting(rec: RecordingView, why: str, *, first: bool) -> Transition | None:
    """Pending until the setting is ready; None if the status already says so.

    `first`: the recording has no phase of its own yet (its sid and attempts are set too).
    """
    message = f"Waiting for VoiceStorageSetting 'default' to be ready ({why})"
    if rec.status.get("message") == message and rec.status.get("phase") == Phase.PENDING.value:
        return None
    status = (_first(rec) if first else {}) | {
        "phase": Phase.PENDING.value,
        "reason": Reason.SETTING_NOT_READY.value,
        "message": message,
    }
    return Transition(status, Event("Warning", "SettingNotReady", message))


def cached_for_setting(
    rec: RecordingView, window: timedelta, why: str, *, first: bool
) -> Transition | None:
    """Cached: the setting was not ready for a whole retry window; None if already so."""
    if rec.status.get("phase") == Phase.CACHED.value:
        return None
    message = (
        f"The storage setting was not ready for {human(window)} ({why}); media kept on "
        f"node {rec.spec.get('nodeName')}. Fix the setting, then run `voicevault retry`"
    )
    status = (_first(rec) if first else {}) | {
        "phase": Phase.CACHED.value,
        "reason": Reason.SETTING_NOT_READY.value,
        "message": message,
    }
    return Transition(status, Event("Warning", "Cached", message))


# -- queued -> pod -----------------------------------------------------------------------------


def scheduled(
    action: Literal["upload", "purge"],
    attempts: int,
    pod: str,
    first: dict[str, Any] | None = None,
) -> Transition:
    """Claimed for pod `pod`'s batch; `attempts` counts the attempts before this one.

    `first`: the `accepted_fields` of a recording queued without a status of its own yet;
    this write then carries them too.
    """
    upload = {"pod": pod, "startedAt": None, "bytesSent": None, "bytesTotal": None}
    if action == "purge":
        return Transition({"upload": upload, "message": "Removing local media (deleted)"}, None)
    message = f"In uploader pod {pod}'s batch (attempt {attempts + 1})"
    status = (first or {}) | {
        "phase": Phase.SCHEDULED.value,
        "reason": None,
        "upload": upload,
        "attempts": attempts + 1,
        "message": message,
    }
    return Transition(status, None)  # the pod's own Event names its batch


def claim_open(status: dict[str, Any], claim: dict[str, Any]) -> bool:
    """A recording handed out with its Scheduled `claim` unwritten (it rides on the pod's
    first write) is still as it was queued: nobody claimed or settled it since. Each claim
    counts an attempt, so a claim made meanwhile shows in `attempts`."""
    if status.get("phase") in (*TERMINAL, Phase.SCHEDULED.value, Phase.UPLOADING.value):
        return False
    return int(status.get("attempts") or 0) == int(claim.get("attempts") or 0) - 1


# -- in the uploader pod: each returns None once the outcome is written ------------------------


def uploading(status: dict[str, Any], sent: int, total: int, at: str) -> dict[str, Any] | None:
    """Progress; never moves a finished recording back."""
    if status.get("phase") in TERMINAL:
        return None
    upload = dict(status.get("upload") or {})
    upload.setdefault("startedAt", at)
    upload.update({"bytesSent": sent, "bytesTotal": total})
    return {"phase": Phase.UPLOADING.value, "reason": None, "upload": upload}


def completed(
    status: dict[str, Any],
    *,
    media_url: str,
    stored: int,
    source_size: int,
    encryption: dict[str, str] | None,
    at: str,
    metadata_url: str | None = None,
) -> dict[str, Any] | None:
    """Completed (with its metadata document beside it when `metadata_url`). None when the
    status already says so: a write whose answer was lost and that is retried must not
    write the outcome a second time (with a new completionTime)."""
    if status.get("phase") in TERMINAL:
        return None
    upload = dict(status.get("upload") or {})
    upload.update({"bytesSent": stored, "bytesTotal": stored})
    updates = [stored_condition(Phase.COMPLETED, media_url=media_url, at=at)]
    extra: dict[str, Any] = {}
    if metadata_url:
        done = condition(
            METADATA_CONDITION,
            True,
            "MetadataStored",
            f"metadata document stored at {metadata_url}",
            _at(at),
        )
        updates.append(done)
        extra = {"metadataUrl": metadata_url}
    return extra | {
        "conditions": merge_conditions(status.get("conditions") or [], updates),
        "phase": Phase.COMPLETED.value,
        "reason": None,
        "message": "Stored in the bucket"
        + (" with its metadata document" if metadata_url else "")
        + "; local media deleted",
        "mediaUrl": media_url,
        "size": source_size,
        "encryptionDetails": encryption,
        "completionTime": at,
        "upload": upload,
        "errorCode": None,
        "errorClass": None,
        "errorMessage": None,
        "nextRetryTime": None,
    }


def failed(
    status: dict[str, Any],
    *,
    code: int,
    error_class: str,
    message: str,
    media_deleted: bool,
    at: str,
) -> dict[str, Any] | None:
    """Failed by the pod that met the fatal error (it knows what it did to the media)."""
    if status.get("phase") in TERMINAL:
        return None
    message = message[:MAX_ERROR_MESSAGE]
    stored = stored_condition(Phase.FAILED, code=code, error_message=message, at=at)
    return {
        "conditions": merge_conditions(status.get("conditions") or [], [stored]),
        "phase": Phase.FAILED.value,
        "reason": Reason.FATAL_ERROR.value,
        "message": failed_summary(code, media_deleted=media_deleted),
        "errorCode": code,
        "errorClass": error_class,
        "errorMessage": message,
        "firstFailureTime": status.get("firstFailureTime") or at,
        "lastFailureTime": at,
        "nextRetryTime": None,
    }


def metadata_pending(
    status: dict[str, Any],
    *,
    media_url: str,
    source_size: int,
    encryption: dict[str, str] | None,
    metadata_url: str,
    fatal: bool,
    code: int,
    message: str,
    at: str,
) -> dict[str, Any] | None:
    """The media is stored, its metadata document is not (yet): the media URL, and a
    MetadataStored=False condition saying why. The phase stays the pod's to decide."""
    if status.get("phase") in TERMINAL:
        return None
    if fatal:
        reason, then = "MetadataFailed", "not retried"
    else:
        reason, then = "MetadataPending", "written on the next attempt"
    text = f"metadata document {metadata_url} not stored ({then}): error {code}: {message}"
    pending = condition(METADATA_CONDITION, False, reason, text[:MAX_ERROR_MESSAGE], _at(at))
    return {
        "mediaUrl": media_url,
        "size": source_size,
        "encryptionDetails": encryption,
        "conditions": merge_conditions(status.get("conditions") or [], [pending]),
    }


def _at(at: str) -> datetime:
    return parse_time(at) or datetime.now(UTC)


def stored_message(
    phase: Phase, *, media_url: Any = None, code: Any = None, error_message: Any = None
) -> str:
    """What the Stored condition and the outcome Event say (the same words for both)."""
    if phase is Phase.COMPLETED:
        return f"stored at {media_url}"
    return f"error {code}: {error_message}"


def stored_condition(
    phase: Phase,
    *,
    at: str,
    media_url: str | None = None,
    code: int | None = None,
    error_message: str | None = None,
) -> dict[str, Any]:
    """The Stored condition the pod's outcome write carries, so that settling a
    recording without a callback writes nothing more."""
    message = stored_message(phase, media_url=media_url, code=code, error_message=error_message)
    if phase is Phase.COMPLETED:
        return condition("Stored", True, "Uploaded", message, _at(at))
    return condition("Stored", False, "UploadFailed", message, _at(at))


def outcome_event(uid: str, name: str, status: dict[str, Any], patch: dict[str, Any]) -> NamedEvent:
    """The Stored or Failed Event for the outcome `patch` writes over `status`, under the
    name `settlement` would give it: posting it again after a crash creates nothing."""
    after = status | patch
    phase = _phase(after.get("phase"))
    stored = find(after.get("conditions") or [], "Stored") or {}
    message = str(stored.get("message", ""))
    if phase is Phase.COMPLETED:
        event = Event("Normal", "Stored", message)
    else:
        event = Event("Warning", "Failed", message)
    return NamedEvent(f"{name}.{outcome_key_for(uid, after)}", event)


# the status fields the in-pod functions above read: what an uploader pod must be told
# of the status its first write builds on, so that write needs no read
POD_READS = ("phase", "upload", "conditions", "firstFailureTime", "retryRequest")


def pod_base(status: dict[str, Any]) -> dict[str, Any]:
    return {key: status[key] for key in POD_READS if status.get(key) is not None}


# -- after the pod -----------------------------------------------------------------------------


RECORDED_BY_POD = ("completed", "fatal")  # item results whose outcome the pod wrote itself


@dataclass(frozen=True)
class AfterAttempt:
    """What the operator writes for one item of an ended pod, and how it is counted.

    `counted` is the uploads metric's result label (None: not counted as an attempt).
    """

    transition: Transition | None
    counted: str | None


def after_attempt(
    rec: RecordingView,
    result: ItemResult | None,
    why: str | None,
    *,
    node: str,
    now: datetime,
    jitter: float | None = None,
) -> AfterAttempt:
    """An uploader pod's result for one recording (None: it has none), and why the pod
    ended if not normally, into the recording's next status."""
    snapshot = rec.snapshot
    if snapshot is None:
        return AfterAttempt(None, None)
    kind = result.kind if result else None
    if kind in RECORDED_BY_POD or rec.phase in (Phase.COMPLETED, Phase.FAILED):
        return AfterAttempt(None, kind or "recorded")  # the uploader wrote it
    if kind == "fatal-unrecorded":
        assert result is not None
        code = result.error_code or int(ErrorCode.UPLOAD_FAILED)
        return AfterAttempt(
            fatal_failure(rec.status, code=code, message=result.message, now=now), "fatal"
        )
    if kind == "skipped" or (result is None and why is None and rec.phase is Phase.SCHEDULED):
        return AfterAttempt(
            requeued("Back in the queue: the uploader pod stopped before this recording"), None
        )
    if kind in ("transient", "completed-unrecorded"):
        assert result is not None
        code, message = result.error_code or int(ErrorCode.UPLOAD_FAILED), result.message
    else:
        code, message = int(ErrorCode.UPLOAD_FAILED), why or UNSTARTED
    status, event = transient_failure(
        rec.status, snapshot, code=code, message=message, now=now, node=node, jitter=jitter
    )
    return AfterAttempt(
        Transition(status | {"upload": None}, event), "transient" if result else "lost"
    )


def pod_lost(rec: RecordingView, now: datetime, jitter: float | None = None) -> Transition | None:
    """Scheduled on a pod the operator does not know (any more): a transient failure."""
    if rec.snapshot is None:
        return None
    status, event = transient_failure(
        rec.status,
        rec.snapshot,
        code=int(ErrorCode.UPLOAD_FAILED),
        message=f"uploader pod {rec.pod} is gone without a result",
        now=now,
        node=rec.node,
        jitter=jitter,
    )
    return Transition(status | {"upload": None}, event)


def failed_before_pod(
    rec: RecordingView, message: str, *, node: str, now: datetime, jitter: float | None = None
) -> Transition | None:
    """No pod could be started for it (no node, no credential): an attempt that failed."""
    if rec.phase not in (Phase.PENDING, Phase.RETRYING) or rec.snapshot is None:
        return None
    attempts = rec.attempts + 1
    status, event = transient_failure(
        rec.status | {"attempts": attempts},
        rec.snapshot,
        code=int(ErrorCode.UPLOAD_FAILED),
        message=message,
        now=now,
        node=node,
        jitter=jitter,
    )
    return Transition(status | {"attempts": attempts}, event)


def transient_failure(
    status: dict[str, Any],
    snapshot: StorageSnapshot,
    *,
    code: int,
    message: str,
    now: datetime,
    node: str,
    jitter: float | None = None,
) -> Transition:
    """Retrying with a next time, or Cached once the retry window is over."""
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
        "errorMessage": message[:MAX_ERROR_MESSAGE],
        "firstFailureTime": iso(first),
        "lastFailureTime": iso(now),
    }
    if decision.give_up:
        text = (
            f"Retried for {human(policy.window)} without success; media kept on node {node}. "
            f"Run `voicevault retry` or annotate {RETRY_ANNOTATION} to try again"
        )
        patch |= {
            "phase": Phase.CACHED.value,
            "reason": Reason.RETRY_WINDOW_OVER.value,
            "nextRetryTime": None,
            "message": text,
        }
        return Transition(
            patch, Event("Warning", "Cached", f"{text} (last error {code}: {message})")
        )
    assert decision.next_attempt_at is not None
    text = f"Transient error {code}: {message}; next attempt at {iso(decision.next_attempt_at)}"
    patch |= {
        "phase": Phase.RETRYING.value,
        "reason": Reason.TRANSIENT_ERROR.value,
        "nextRetryTime": iso(decision.next_attempt_at),
        "message": text,
    }
    return Transition(patch, Event("Warning", "UploadFailed", text))


def requeued(reason: str) -> Transition:
    """Back to Pending without counting a failure (the pod never got to it)."""
    status = {"phase": Phase.PENDING.value, "reason": Reason.REQUEUED.value, "message": reason}
    return Transition(status, None)


def fatal_failure(status: dict[str, Any], *, code: int, message: str, now: datetime) -> Transition:
    """Failed, written by the operator for a pod that could not write it itself."""
    patch = {
        "phase": Phase.FAILED.value,
        "reason": Reason.FATAL_ERROR.value,
        "errorCode": code,
        "errorClass": "Fatal",
        "errorMessage": message[:MAX_ERROR_MESSAGE],
        "firstFailureTime": status.get("firstFailureTime") or iso(now),
        "lastFailureTime": iso(now),
        "nextRetryTime": None,
        # the uploader pod dealt with the media; this writer cannot tell what it found
        "message": failed_summary(code, media_deleted=None),
    }
    return Transition(patch, Event("Warning", "Failed", f"fatal error {code}: {message}"))


# -- a person asks again -----------------------------------------------------------------------


def retry_wanted(rec: RecordingView) -> bool:
    """The retry annotation names a request this recording has not acted on yet."""
    asked = rec.annotations.get(RETRY_ANNOTATION)
    return bool(asked) and asked != rec.status.get("retryRequest")


def retry_requested(rec: RecordingView) -> Transition:
    """A fresh retry window (Cached media, or a failed recording). Without a snapshot (the
    setting was never ready) the phase is cleared, so the recording is accepted anew."""
    asked = rec.annotations[RETRY_ANNOTATION]
    if rec.snapshot is None:
        status: dict[str, Any] = {
            "retryRequest": asked,
            "phase": None,
            "reason": Reason.MANUAL_RETRY.value,
            "message": "Manual retry",
        }
        return Transition(status, Event("Normal", "ManualRetry", "manual retry requested"))
    message = (
        f"Manual retry requested ({RETRY_ANNOTATION}={asked}); queued for node "
        f"{rec.spec.get('nodeName')}"
    )
    status = {
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
    return Transition(status, Event("Normal", "ManualRetry", message))


# -- finished: conditions and the callback -----------------------------------------------------


def needs_settling(rec: RecordingView) -> bool:
    if find(rec.status.get("conditions") or [], "Stored") is None:
        return True
    return callback_owed(rec)


def callback_owed(rec: RecordingView) -> bool:
    """A callback is due and no result is recorded (never sent, or its sender died)."""
    snapshot = rec.snapshot
    if not (snapshot and snapshot.callback_url):
        return False
    delivered = find(rec.status.get("conditions"), "CallbackDelivered")
    return delivered is None or delivered.get("status") == "Unknown"


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
    return outcome_key_for(rec.uid, rec.status)


def outcome_key_for(uid: str, status: dict[str, Any]) -> str:
    text = "|".join(
        (
            uid,
            str(status.get("phase")),
            str(status.get("errorCode") or 0),
            str(status.get("retryRequest") or ""),
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
            message = stored_message(Phase.COMPLETED, media_url=rec.status.get("mediaUrl"))
            updates.append(condition("Stored", True, "Uploaded", message, now, rec.generation))
            event = Event("Normal", "Stored", message)
        else:
            message = stored_message(
                Phase.FAILED,
                code=rec.status.get("errorCode"),
                error_message=rec.status.get("errorMessage"),
            )
            updates.append(condition("Stored", False, "UploadFailed", message, now, rec.generation))
            event = Event("Warning", "Failed", message)
    callback = callback_owed(rec)
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


def callback_recorded(
    rec: RecordingView, *, delivered: bool, reason: str, message: str, attempts: int, now: datetime
) -> dict[str, Any] | None:
    """The callback's result over this operator's claim; None if the claim is not there
    (a manual retry started a new outcome)."""
    claim = find(rec.status.get("conditions"), "CallbackDelivered")
    if claim is None or claim.get("reason") != SENDING:
        return None
    result = condition("CallbackDelivered", delivered, reason, message, now, rec.generation)
    return {
        "conditions": merge_conditions(rec.status.get("conditions") or [], [result]),
        "callbackAttempts": attempts,
    }


# -- deleted -----------------------------------------------------------------------------------

Deletion = Literal["nothing", "wait-for-pod", "release", "purge"]


def deletion(rec: RecordingView) -> Deletion:
    """What a deleted Recording still needs before its finalizer goes.

    An uploader pod that has it finishes first (its outcome decides); media that is still
    on the node is purged by one; anything else is released at once.
    """
    if FINALIZER not in rec.finalizers:
        return "nothing"
    if rec.phase in (Phase.SCHEDULED, Phase.UPLOADING):
        return "wait-for-pod"
    if rec.phase is None:
        return "purge"  # queued without a status of its own yet: its media is on the node
    if rec.snapshot is None or rec.phase not in (Phase.PENDING, Phase.RETRYING, Phase.CACHED):
        return "release"
    return "purge"


def human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m" if minutes else f"{hours}h"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
