"""The recording metadata document written beside the media object (metadataObject on).

Twilio keeps a recording's metadata behind its API; with this document the customer's
bucket holds both, so nobody needs a script to join them. Pure: this module builds and
encodes the document; `metadata_store` writes it. The JSON Schema it follows is
docs/recording-metadata.schema.json; the keys are snake_case, as in Twilio's own
Recording resource and its encryption details.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from voicevault.crds.recording_names import RecordingSource

if TYPE_CHECKING:
    from voicevault.contract import EncryptionDetails
    from voicevault.crds.recording import RecordingSpec, StorageSnapshot
    from voicevault.crds.voicestoragesetting import VoiceStorageSettingSpec

SCHEMA_ID = "https://voicevault.io/schemas/recording-metadata/v1.json"
SCHEMA_VERSION = 1
CONTENT_TYPE = "application/json"
SUFFIX = ".json"


def metadata_object_key(media_key: str) -> str:
    """`<object key>.json`: the document sits next to the media, under the same prefix."""
    return media_key + SUFFIX


def metadata_enabled(setting: VoiceStorageSettingSpec) -> bool:
    return setting.metadata_object is not None and setting.metadata_object.enabled


@dataclass(frozen=True, kw_only=True)
class RecordingFacts:
    """The Twilio-like metadata of one recording, as the document reports it.

    Built from a validated `RecordingSpec` by the operator; the pod reads it back from
    the batch file with `contract.parse_batch`, which checks the same rules."""

    account_sid: str
    recording_sid: str
    call_sid: str | None = None
    conference_sid: str | None = None
    source: RecordingSource
    channels: int = 1
    track: Literal["inbound", "outbound", "both"] = "both"
    start_time: datetime
    duration: int

    @classmethod
    def from_spec(cls, spec: RecordingSpec, recording_sid: str) -> RecordingFacts:
        return cls(
            account_sid=spec.account_sid,
            recording_sid=recording_sid,
            call_sid=spec.call_sid,
            conference_sid=spec.conference_sid,
            source=spec.source,
            channels=spec.channels,
            track=spec.track,
            start_time=spec.start_time,
            duration=spec.duration,
        )


@dataclass(frozen=True, kw_only=True)
class MetadataTarget:
    """Where the document goes and what it says about the recording (one batch item)."""

    key: str
    url: str
    recording: RecordingFacts


def metadata_target(
    spec: Mapping[str, Any], recording_sid: str, snapshot: StorageSnapshot
) -> MetadataTarget | None:
    """What an uploader needs to write this recording's document; None when it has none
    (its setting had metadataObject off when the recording was accepted)."""
    if not snapshot.metadata_key or not snapshot.metadata_url:
        return None
    from pydantic import ValidationError

    from voicevault.crds.recording import RecordingSpec

    try:
        parsed = RecordingSpec.model_validate(spec)
    except ValidationError:
        return None  # such a recording is Failed (InvalidSpec) before it is ever queued
    return MetadataTarget(
        key=snapshot.metadata_key,
        url=snapshot.metadata_url,
        recording=RecordingFacts.from_spec(parsed, recording_sid),
    )


@dataclass(frozen=True)
class StoredMedia:
    """The media object as stored: what the document says about it."""

    key: str
    url: str
    size: int
    content_type: str
    sha256: str  # hex digest of the stored bytes (ciphertext and tag when encrypted)
    encryption: EncryptionDetails | None


def build_document(facts: RecordingFacts, media: StoredMedia, version: str) -> dict[str, Any]:
    """The metadata document; it holds no key material (only the wrapped content key)."""
    return {
        "schema": SCHEMA_ID,
        "schema_version": SCHEMA_VERSION,
        "account_sid": facts.account_sid,
        "recording_sid": facts.recording_sid,
        "call_sid": facts.call_sid,
        "conference_sid": facts.conference_sid,
        "source": facts.source,
        "channels": facts.channels,
        "track": facts.track,
        "start_time": _rfc3339(facts.start_time),
        "duration": facts.duration,
        "media": {
            "key": media.key,
            "url": media.url,
            "size": media.size,
            "content_type": media.content_type,
            "sha256": media.sha256,
        },
        "encryption_details": media.encryption.to_twilio() if media.encryption else None,
        "voicevault_version": version,
    }


def encode_document(document: dict[str, Any]) -> bytes:
    """Stable bytes (sorted keys), so a re-built document is byte-identical."""
    return (json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def _rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
