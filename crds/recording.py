"""Recording: one call recording held on a node, and its way into the customer's bucket."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from voicevault.crds.awscredential import CREDENTIAL_SID
from voicevault.crds.meta import DNS_SUBDOMAIN, Condition, KubeModel, conditions_field

KIND = "Recording"
PLURAL = "recordings"
RECORDING_SID = r"^RE[0-9a-f]{32}$"


class Phase(StrEnum):
    """Where a recording is. Each phase is true when shown: no phase is set ahead of the fact."""

    PENDING = "Pending"  # accepted; waiting for an uploader pod on its node
    SCHEDULED = "Scheduled"  # in the batch of an uploader pod that has been created
    UPLOADING = "Uploading"  # the uploader reported bytes sent
    RETRYING = "Retrying"  # a transient failure; next attempt at status.nextRetryTime
    COMPLETED = "Completed"  # stored at status.mediaUrl; local media deleted
    CACHED = "Cached"  # retry window over; media kept on its node until a manual retry
    FAILED = "Failed"  # fatal error (status.errorCode); local media deleted
    LOCAL = "Local"  # external storage was off for the namespace; media stays with the platform


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


class StatusCallback(KubeModel):
    """Where to POST the recording status callback (overrides the setting's default URL)."""

    url: str = Field(max_length=2048, pattern=r"^https?://[^\s#]+$")


class RecordingSpec(KubeModel):
    """Twilio-like metadata of a recording, and where its media is. Immutable once created."""

    model_config = KubeModel.model_config | ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.callSid) || has(self.conferenceSid)",
                    "message": "a recording belongs to a call or a conference: "
                    "set callSid or conferenceSid",
                },
                {
                    "rule": "self == oldSelf",
                    "message": "a Recording's spec is immutable; create a new Recording instead",
                },
            ]
        }
    )

    account_sid: str = Field(pattern=r"^AC[0-9a-f]{32}$", description="Account SID (AC...).")
    call_sid: str | None = Field(default=None, pattern=r"^CA[0-9a-f]{32}$")
    conference_sid: str | None = Field(default=None, pattern=r"^CF[0-9a-f]{32}$")
    source: RecordingSource = Field(description="What started the recording (Twilio's values).")
    channels: int = Field(default=1, ge=1, le=2)
    track: Literal["inbound", "outbound", "both"] = "both"
    start_time: datetime
    duration: int = Field(ge=0, le=7 * 24 * 3600, description="Duration in seconds.")
    node_name: str = Field(
        max_length=253, pattern=DNS_SUBDOMAIN, description="Node whose disk holds the media."
    )
    media_path: str = Field(
        max_length=1024,
        pattern=r"^[A-Za-z0-9._/-]+\.(wav|mp3)$",
        description=(
            "Path of the media file relative to this namespace's folder in the node's "
            "recordings directory (<recordingsDir>/<namespace>/<mediaPath>); .wav or .mp3."
        ),
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!self.startsWith('/') && !self.split('/').exists(s, "
                    "s == '' || s == '.' || s == '..')",
                    "message": "mediaPath must be relative, without empty, '.' or '..' segments",
                }
            ]
        },
    )
    status_callback: StatusCallback | None = None


class StorageSnapshot(KubeModel):
    """The setting this recording falls under, frozen when the recording was accepted.

    Later changes to the VoiceStorageSetting apply only to recordings created afterwards.
    """

    setting_generation: Annotated[int, Field(ge=0)]
    bucket_url: str
    endpoint_url: str | None = None
    region: str
    bucket: str
    object_key: str
    media_url: str = Field(description="The URL the object will have once stored.")
    credential_name: str
    public_key_sid: str | None = Field(default=None, pattern=CREDENTIAL_SID)
    public_key: str | None = Field(default=None, description="PEM of the encryption key.")
    retry_window_seconds: int = Field(ge=1)
    initial_backoff_seconds: int = Field(ge=1)
    max_backoff_seconds: int = Field(ge=1)
    callback_url: str | None = None
    callback_signing_secret: str | None = Field(
        default=None, description="Name of the Secret whose key signs callbacks."
    )
    callback_signing_key: str | None = None


class UploadAttempt(KubeModel):
    """The uploader pod that owns the current attempt; only it may report on it."""

    pod: str
    started_at: datetime | None = None
    bytes_sent: Annotated[int, Field(ge=0)] | None = None
    bytes_total: Annotated[int, Field(ge=0)] | None = None


class EncryptionDetails(KubeModel):
    """Twilio's rsa-aes encryption details (camelCase); decrypt with `voicevault decrypt`."""

    type: Literal["rsa-aes"] = "rsa-aes"
    public_key_sid: str = Field(pattern=CREDENTIAL_SID)
    encrypted_cek: str = Field(description="Content key wrapped with RSA-OAEP-SHA256, base64.")
    iv: str = Field(description="AES-GCM initialization vector, base64 (12 bytes).")


class RecordingStatus(KubeModel):
    """Progress and outcome of the upload. Written by the operator and its uploader pods."""

    sid: str | None = Field(default=None, pattern=RECORDING_SID, description="RE + 32 hex.")
    phase: Phase | None = None
    message: str | None = Field(default=None, max_length=1024, description="Why, for people.")
    media_url: str | None = Field(default=None, description="Full URL of the stored object.")
    size: Annotated[int, Field(ge=0)] | None = Field(default=None, description="Media bytes.")
    attempts: Annotated[int, Field(ge=0)] = 0
    first_failure_time: datetime | None = None
    last_failure_time: datetime | None = None
    next_retry_time: datetime | None = None
    error_code: int | None = Field(
        default=None, description="Twilio-style error code: 16111, 16112, 16104 or 16105."
    )
    error_class: Literal["Transient", "Fatal"] | None = None
    error_message: str | None = Field(default=None, max_length=1024)
    encryption_details: EncryptionDetails | None = None
    storage: StorageSnapshot | None = None
    upload: UploadAttempt | None = None
    completion_time: datetime | None = None
    callback_attempts: Annotated[int, Field(ge=0)] | None = None
    retry_request: str | None = Field(
        default=None,
        max_length=256,
        description="Value of the voicevault.io/retry annotation last acted on.",
    )
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    conditions: list[Condition] = conditions_field(
        "Stored: the object is in the bucket. CallbackDelivered: the status callback got a 2xx."
    )
