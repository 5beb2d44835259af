"""Recording: what to do about one Recording now. Pure: no I/O here.

`reconcile` looks at one Recording (and the namespace's setting) and says what to do:
patch the status, add or remove the finalizer, queue an upload or a purge on its node,
settle a finished upload (conditions, callback). Every status it asks for is built by
the phase machine in `voicevault/phases.py`; the recordings controller carries the
decisions out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from voicevault import phases
from voicevault.crds.recording import FINALIZER, Phase, RecordingSpec, StorageSnapshot
from voicevault.operator.conditions import parse_time
from voicevault.operator.settings import SettingView
from voicevault.operator.snapshot import SnapshotError, take_snapshot
from voicevault.phases import Event, RecordingView, Transition


@dataclass(frozen=True)
class QueueRequest:
    """Work for the node's next uploader pod."""

    action: Literal["upload", "purge"]
    due: datetime
    # taken now for a recording that has no status of its own yet: its first write (the
    # Scheduled one) carries it, so being queued costs no write of its own
    snapshot: StorageSnapshot | None = None


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

    def write(self, transition: Transition | None) -> None:
        if transition is not None:
            self.status = transition.status
            if transition.event is not None:
                self.events.append(transition.event)


def reconcile(rec: RecordingView, setting: SettingView | None, now: datetime) -> Decision:
    """What to do about this Recording now."""
    if rec.deleting:
        return _on_deletion(rec, setting, now)
    decision = Decision(add_finalizer=FINALIZER not in rec.finalizers)
    phase = rec.phase
    if phase is None or (phase is Phase.PENDING and rec.snapshot is None):
        _accept(rec, setting, now, decision)
    elif phase in (Phase.PENDING, Phase.RETRYING) and setting and setting.refuses(rec.snapshot):
        # accepted while the configuration worked, refused by the bucket since: no upload
        # into a known refusal (it would delete the media); wait as a new recording would
        _wait_for_setting(rec, setting, now, decision, first=False, window=_window(rec))
        decision.unqueue = True
    elif phase is Phase.PENDING:
        decision.queue = QueueRequest("upload", now)
    elif phase is Phase.RETRYING:
        due = parse_time(rec.status.get("nextRetryTime")) or now
        decision.queue = QueueRequest("upload", due)
    elif phase in (Phase.SCHEDULED, Phase.UPLOADING):
        decision.owned_by_pod = rec.pod
    elif phase in (Phase.CACHED, Phase.FAILED) and phases.retry_wanted(rec):
        decision.write(phases.retry_requested(rec))
        if rec.snapshot is not None:
            decision.queue = QueueRequest("upload", now)
    if (
        phase in (Phase.COMPLETED, Phase.FAILED)
        and not decision.queue
        and phases.needs_settling(rec)
    ):
        decision.settle = True
    return decision


def _accept(
    rec: RecordingView, setting: SettingView | None, now: datetime, decision: Decision
) -> None:
    """First sight (or still waiting for the setting): snapshot the setting, or wait."""
    try:
        spec = RecordingSpec.model_validate(rec.spec)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        decision.write(phases.invalid_spec(rec, f"invalid spec.{where}: {first['msg']}"))
        return
    if setting is None or (setting.ready and not setting.enabled):
        decision.write(phases.kept_local(rec, no_setting=setting is None))
        return
    if not setting.ready:
        _wait_for_setting(rec, setting, now, decision, first=True)
        return
    callback = spec.status_callback.url if spec.status_callback else None
    try:
        snapshot = take_snapshot(setting, spec, rec.sid, callback)
    except SnapshotError as exc:
        _wait_for_setting(rec, setting, now, decision, first=True, problem=str(exc))
        return
    decision.queue = QueueRequest("upload", now, snapshot)


def _wait_for_setting(
    rec: RecordingView,
    setting: SettingView,
    now: datetime,
    decision: Decision,
    *,
    first: bool,
    problem: str | None = None,
    window: timedelta | None = None,
) -> None:
    """The setting is not ready: wait, for as long as a retry window, then keep it cached."""
    window = window or timedelta(seconds=setting.retry_window_seconds)
    why = problem or f"{setting.reason}: {setting.message}"
    if now >= rec.created + window:
        decision.write(phases.cached_for_setting(rec, window, why, first=first))
        return
    decision.waiting_for_setting = True
    decision.write(phases.waiting_for_setting(rec, why, first=first))


def _window(rec: RecordingView) -> timedelta | None:
    snapshot = rec.snapshot
    return timedelta(seconds=snapshot.retry_window_seconds) if snapshot else None


def _on_deletion(rec: RecordingView, setting: SettingView | None, now: datetime) -> Decision:
    what = phases.deletion(rec)
    snapshot = rec.snapshot
    if what == "purge" and snapshot is None:
        # never written: a purge pod needs only the node, the path and a credential, so
        # the setting as it is now serves (without one, the media cannot be reached)
        snapshot = _purge_snapshot(rec, setting)
        if snapshot is None:
            what = "release"
    if what == "wait-for-pod":
        return Decision(owned_by_pod=rec.pod)  # let the pod finish; its outcome decides
    if what == "release":
        return Decision(remove_finalizer=True, unqueue=True)
    if what == "purge":
        return Decision(queue=QueueRequest("purge", now, None if rec.snapshot else snapshot))
    return Decision()


def _purge_snapshot(rec: RecordingView, setting: SettingView | None) -> StorageSnapshot | None:
    if setting is None or not setting.ready or not setting.enabled:
        return None
    try:
        spec = RecordingSpec.model_validate(rec.spec)
        return take_snapshot(setting, spec, rec.sid, None)
    except (ValidationError, SnapshotError):
        return None
