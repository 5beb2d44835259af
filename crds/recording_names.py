"""A Recording's names, phases and reasons, without its models.

The uploader pod reaches these through `phases`; `crds.recording` builds the pydantic
models on them, which the pod does not need and whose build it would pay at each start.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

KIND = "Recording"
PLURAL = "recordings"
RECORDING_SID = r"^RE[0-9a-f]{32}$"
ACCOUNT_SID = r"^AC[0-9a-f]{32}$"
CALL_SID = r"^CA[0-9a-f]{32}$"
CONFERENCE_SID = r"^CF[0-9a-f]{32}$"


class Phase(StrEnum):
    """Where a recording is. Each phase is true when shown: no phase is set ahead of the fact."""

    PENDING = "Pending"  # accepted; waiting for an uploader pod on its node
    SCHEDULED = "Scheduled"  # in the batch of an uploader pod that has been created
    UPLOADING = "Uploading"  # the uploader reported bytes sent
    RETRYING = "Retrying"  # a transient failure; next attempt at status.nextRetryTime
    COMPLETED = "Completed"  # stored at status.mediaUrl; local media deleted
    CACHED = "Cached"  # retry window over; media kept on its node until a manual retry
    FAILED = "Failed"  # fatal error (status.errorCode); local media, if any, deleted
    LOCAL = "Local"  # external storage was off for the namespace; media stays with the platform


class Reason(StrEnum):
    """Why a recording is in its phase: status.reason, the REASON column. None when obvious."""

    QUEUED = "Queued"  # Pending: waiting for an uploader pod on its node
    REQUEUED = "Requeued"  # Pending: its uploader pod stopped before getting to it
    MANUAL_RETRY = "ManualRetry"  # Pending: a person asked for another try
    SETTING_NOT_READY = "SettingNotReady"  # Pending or Cached: the namespace's setting is not
    TRANSIENT_ERROR = "TransientError"  # Retrying: errorCode and errorMessage say which
    RETRY_WINDOW_OVER = "RetryWindowOver"  # Cached: retried for the whole window
    FATAL_ERROR = "FatalError"  # Failed: errorCode and errorMessage say which
    INVALID_SPEC = "InvalidSpec"  # Failed: the spec could not be read
    EXTERNAL_STORAGE_OFF = "ExternalStorageOff"  # Local: the setting turned storage off
    NO_SETTING = "NoSetting"  # Local: the namespace had no VoiceStorageSetting


TERMINAL_PHASES = frozenset({Phase.COMPLETED, Phase.FAILED, Phase.LOCAL})
# phases in which the media may still be on the node
MEDIA_ON_NODE_PHASES = frozenset(
    {Phase.PENDING, Phase.SCHEDULED, Phase.UPLOADING, Phase.RETRYING, Phase.CACHED}
)
RETRY_ANNOTATION = "voicevault.io/retry"
FINALIZER = "voicevault.io/cleanup"

RecordingSource = Literal[
    "DialVerb",
    "Conference",
    "OutboundAPI",
    "Trunking",
    "RecordVerb",
    "StartCallRecordingAPI",
    "StartConferenceRecordingAPI",
]
