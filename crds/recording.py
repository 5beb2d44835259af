"""Recording: one call recording held on a node, and its way into the customer's bucket."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from voicevault.crds.awscredential import CREDENTIAL_SID
from voicevault.crds.meta import (
    DNS_SUBDOMAIN,
    Condition,
    KubeModel,
    cel_rule,
    conditions_field,
)

# re-exported: the names live where the pod can import them without pydantic
from voicevault.crds.recording_names import (
    ACCOUNT_SID,
    CALL_SID,
    CONFERENCE_SID,
    FINALIZER,
    KIND,
    MEDIA_ON_NODE_PHASES,
    PLURAL,
    RECORDING_SID,
    RETRY_ANNOTATION,
    TERMINAL_PHASES,
    Phase,
    Reason,
    RecordingSource,
)

__all__ = [
    "ACCOUNT_SID",
    "CALL_SID",
    "CONFERENCE_SID",
    "FINALIZER",
    "KIND",
    "MEDIA_ON_NODE_PHASES",
    "PLURAL",
    "RECORDING_SID",
    "RETRY_ANNOTATION",
    "TERMINAL_PHASES",
    "Phase",
    "Reason",
    "RecordingSource",
]


class StatusCallback(KubeModel):
    """Where to POST the recording status callback (overrides the setting's default URL)."""

    url: str = Field(
        max_length=2048,
        pattern=r"^https?://[^\s#]+$",
        description="http(s) URL that receives the Twilio-style recording status callback.",
    )


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

    account_sid: str = Field(pattern=ACCOUNT_SID, description="Account SID (AC...).")
    call_sid: str | None = Field(
        default=None,
        pattern=CALL_SID,
        description="SID of the call recorded (CA + 32 hex). callSid or conferenceSid is set.",
    )
    conference_sid: str | None = Field(
        default=None,
        pattern=CONFERENCE_SID,
        description="SID of the conference recorded (CF + 32 hex), for conference recordings.",
    )
    source: RecordingSource = Field(description="What started the recording (Twilio's values).")
    channels: int = Field(
        default=1, ge=1, le=2, description="Audio channels: 1 (mixed) or 2 (dual-channel)."
    )
    track: Literal["inbound", "outbound", "both"] = Field(
        default="both", description="Which audio track was recorded: inbound, outbound or both."
    )
    start_time: datetime = Field(
        description="When the recording started (RFC 3339, e.g. 2026-11-02T14:03:00Z)."
    )
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
                cel_rule(
                    "!self.startsWith('/') && !self.split('/').exists(s, "
                    "s == '' || s == '.' || s == '..')",
                    "mediaPath must be relative, without empty, '.' or '..' segments",
                    shows="self",
                )
            ]
        },
    )
    status_callback: StatusCallback | None = Field(
        default=None,
        description="Where to send this recording's status callback, instead of the setting's.",
    )


class StorageSnapshot(KubeModel):
    """The setting this recording falls under, frozen when the recording was accepted.

    Later changes to the VoiceStorageSetting apply only to recordings created afterwards.
    """

    setting_generation: Annotated[int, Field(ge=0)] = Field(
        description="metadata.generation of the VoiceStorageSetting that was copied."
    )
    bucket_url: str = Field(description="spec.externalStorage.bucketUrl of the setting.")
    endpoint_url: str | None = Field(
        default=None, description="spec.externalStorage.endpointUrl of the setting, if any."
    )
    region: str = Field(description="Region requests are signed for.")
    bucket: str = Field(description="Bucket name.")
    object_key: str = Field(description="Object key the recording is stored under.")
    media_url: str = Field(description="The URL the object will have once stored.")
    credential_name: str = Field(description="AwsCredential whose key uploads this recording.")
    public_key_sid: str | None = Field(
        default=None,
        pattern=CREDENTIAL_SID,
        description="SID of the encryption public key; absent when not encrypted.",
    )
    public_key: str | None = Field(default=None, description="PEM of the encryption key.")
    retry_window_seconds: int = Field(
        ge=1, description="How long transient failures are retried, from the first failure."
    )
    initial_backoff_seconds: int = Field(ge=1, description="First delay between attempts.")
    max_backoff_seconds: int = Field(ge=1, description="Longest delay between attempts.")
    callback_url: str | None = Field(
        default=None, description="Where the status callback goes; none when absent."
    )
    callback_signing_secret: str | None = Field(
        default=None, description="Name of the Secret whose key signs callbacks."
    )
    callback_signing_key: str | None = Field(
        default=None, description="Key inside that Secret (its name, never its value)."
    )
    metadata_key: str | None = Field(
        default=None,
        description="Object key of the metadata JSON (objectKey + .json); absent when off.",
    )
    metadata_url: str | None = Field(
        default=None, description="The URL the metadata JSON will have once stored."
    )


class UploadAttempt(KubeModel):
    """The uploader pod that owns the current attempt; only it may report on it."""

    pod: str = Field(description="Name of the uploader pod (in the operator's namespace).")
    started_at: datetime | None = Field(
        default=None, description="When the pod first reported bytes sent."
    )
    bytes_sent: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Bytes sent to the bucket so far."
    )
    bytes_total: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Bytes the stored object will have (ciphertext if encrypted)."
    )


class EncryptionDetails(KubeModel):
    """Twilio's rsa-aes encryption details (camelCase); decrypt with `voicevault decrypt`."""

    type: Literal["rsa-aes"] = Field(default="rsa-aes", description="Always rsa-aes.")
    public_key_sid: str = Field(
        pattern=CREDENTIAL_SID, description="SID of the public key the content key is wrapped for."
    )
    encrypted_cek: str = Field(description="Content key wrapped with RSA-OAEP-SHA256, base64.")
    iv: str = Field(description="AES-GCM initialization vector, base64 (12 bytes).")


class RecordingStatus(KubeModel):
    """Progress and outcome of the upload. Written by the operator and its uploader pods."""

    sid: str | None = Field(default=None, pattern=RECORDING_SID, description="RE + 32 hex.")
    phase: Phase | None = Field(
        default=None,
        description=(
            "Pending, Scheduled, Uploading, Retrying, Completed, Cached, Failed or Local "
            "(see the README's lifecycle)."
        ),
    )
    # a string, not an enum: a newer operator's reason must never make a status write fail
    reason: str | None = Field(
        default=None,
        max_length=64,
        pattern=r"^[A-Za-z][A-Za-z0-9]*$",
        description=(
            "Why the recording is in its phase, in one word (the REASON column); absent when "
            "the phase says it all. message has the details."
        ),
    )
    message: str | None = Field(default=None, max_length=1024, description="Why, for people.")
    media_url: str | None = Field(default=None, description="Full URL of the stored object.")
    metadata_url: str | None = Field(
        default=None,
        description="Full URL of the metadata JSON beside it, once stored (metadataObject on).",
    )
    size: Annotated[int, Field(ge=0)] | None = Field(default=None, description="Media bytes.")
    attempts: Annotated[int, Field(ge=0)] = Field(
        default=0,
        description="Upload attempts started in this retry window (a manual retry resets it).",
    )
    first_failure_time: datetime | None = Field(
        default=None,
        description="First failure of the current retry window; the window starts here.",
    )
    last_failure_time: datetime | None = Field(
        default=None, description="Most recent failed attempt."
    )
    next_retry_time: datetime | None = Field(
        default=None, description="When the next attempt is due (phase Retrying)."
    )
    error_code: int | None = Field(
        default=None, description="Twilio-style error code: 16111, 16112, 16104 or 16105."
    )
    error_class: Literal["Transient", "Fatal"] | None = Field(
        default=None, description="Transient (retried within the window) or Fatal (never retried)."
    )
    error_message: str | None = Field(
        default=None, max_length=1024, description="What went wrong in the last failed attempt."
    )
    encryption_details: EncryptionDetails | None = None
    storage: StorageSnapshot | None = None
    upload: UploadAttempt | None = None
    completion_time: datetime | None = Field(
        default=None, description="When the object was stored (phase Completed)."
    )
    callback_attempts: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="HTTP requests made to deliver the status callback."
    )
    retry_request: str | None = Field(
        default=None,
        max_length=256,
        description="Value of the voicevault.io/retry annotation last acted on.",
    )
    observed_generation: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="metadata.generation the operator last acted on."
    )
    conditions: list[Condition] = conditions_field(
        "Stored: the object is in the bucket. MetadataStored: its metadata JSON is too "
        "(metadataObject on). CallbackDelivered: the status callback got a 2xx."
    )
