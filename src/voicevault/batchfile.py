"""The batch file and its credential files as JSON: written by the operator, read by the pod.

Plain parsing on the `contract` dataclasses, so an uploader pod's start does not pay for
pydantic (#19). A file that does not fit raises `BatchFileError` naming the first field
that is missing or wrong; it never quotes a value, so a credential file's secrets stay out
of the message. Unknown fields are ignored: an older pod can read a newer operator's batch.
"""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import datetime
from typing import Any, Final, get_args

from voicevault.contract import (
    HANDOFF_FILE,
    SPEC_VERSION,
    BatchFileError,
    BatchItem,
    BatchSpec,
    CredentialFile,
    HandoffFile,
)
from voicevault.crds.recording_names import (
    ACCOUNT_SID,
    CALL_SID,
    CONFERENCE_SID,
    RECORDING_SID,
    RecordingSource,
)
from voicevault.uploader.metadata import MetadataTarget, RecordingFacts

_REQUIRED: Final = object()
_TYPE_NAMES = {str: "a string", int: "an integer", dict: "an object", list: "a list"}
_SOURCES: tuple[str, ...] = get_args(RecordingSource)


def to_json(value: BatchSpec | CredentialFile | HandoffFile) -> str:
    """Compact JSON of the dataclass, field names as they are; datetimes in ISO 8601."""
    return json.dumps(dataclasses.asdict(value), separators=(",", ":"), default=_iso)


def load(text: str | bytes, name: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BatchFileError(f"{name} is not JSON (line {_line(exc)})") from None
    if not isinstance(data, dict):
        raise BatchFileError(f"{name} must hold a JSON object")
    return data


def read_spec(data: dict[str, Any]) -> BatchSpec:
    items = _get(data, "items", "batch", list)
    return BatchSpec(
        version=_get(data, "version", "batch", int, SPEC_VERSION),
        pod=_get(data, "pod", "batch", str),
        node=_get(data, "node", "batch", str),
        items=[read_item(raw, f"items[{i}]") for i, raw in enumerate(items)],
        chunk=_get(data, "chunk", "batch", int, 0),
    )


def read_item(data: object, where: str) -> BatchItem:
    raw = _object(data, where)

    def text(name: str, default: Any = _REQUIRED) -> Any:
        return _get(raw, name, where, str, default)

    def optional(name: str) -> Any:
        return _get(raw, name, where, str, None, nullable=True)

    metadata = raw.get("metadata")
    return BatchItem(
        namespace=text("namespace"),
        name=text("name"),
        uid=text("uid"),
        sid=text("sid"),
        action=_choice(raw, "action", where, ("upload", "purge"), "upload"),
        media_path=text("media_path"),
        bucket_url=text("bucket_url"),
        endpoint_url=optional("endpoint_url"),
        region=text("region"),
        bucket=text("bucket"),
        object_key=text("object_key"),
        media_url=text("media_url"),
        public_key=optional("public_key"),
        public_key_sid=optional("public_key_sid"),
        credential=text("credential"),
        credential_name=text("credential_name", ""),
        metadata=None if metadata is None else _metadata(metadata, f"{where}.metadata"),
        resource_version=text("resource_version", ""),
        status=_get(raw, "status", where, dict, {}),
        claim=_get(raw, "claim", where, dict, {}),
    )


def read_credential(data: dict[str, Any], name: str) -> CredentialFile:
    return CredentialFile(
        access_key_id=_get(data, "access_key_id", name, str),
        secret_access_key=_get(data, "secret_access_key", name, str),
        session_token=_get(data, "session_token", name, str, None, nullable=True),
    )


def read_handoff(data: dict[str, Any]) -> HandoffFile:
    return HandoffFile(
        url=_get(data, "url", HANDOFF_FILE, str),
        fingerprint=_get(data, "fingerprint", HANDOFF_FILE, str),
        token=_get(data, "token", HANDOFF_FILE, str),
    )


def _metadata(data: object, where: str) -> MetadataTarget:
    raw = _object(data, where)
    return MetadataTarget(
        key=_get(raw, "key", where, str),
        url=_get(raw, "url", where, str),
        recording=read_facts(_get(raw, "recording", where, dict), f"{where}.recording"),
    )


def read_facts(raw: dict[str, Any], where: str) -> RecordingFacts:
    """The same rules as RecordingSpec's fields: the operator built these from one."""
    channels = _get(raw, "channels", where, int, 1)
    if channels not in (1, 2):
        raise BatchFileError(f"{where}.channels: must be 1 or 2", "channels")
    duration = _get(raw, "duration", where, int)
    if duration < 0:
        raise BatchFileError(f"{where}.duration: must not be negative", "duration")
    return RecordingFacts(
        account_sid=_sid(raw, "account_sid", where, ACCOUNT_SID),
        recording_sid=_sid(raw, "recording_sid", where, RECORDING_SID),
        call_sid=_sid(raw, "call_sid", where, CALL_SID, optional=True),
        conference_sid=_sid(raw, "conference_sid", where, CONFERENCE_SID, optional=True),
        source=_choice(raw, "source", where, _SOURCES),
        channels=channels,
        track=_choice(raw, "track", where, ("inbound", "outbound", "both"), "both"),
        start_time=_time(raw, "start_time", where),
        duration=duration,
    )


def _object(data: object, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise BatchFileError(f"{where}: must be an object")
    return data


def _get(
    data: dict[str, Any],
    name: str,
    where: str,
    kind: type,
    default: Any = _REQUIRED,
    *,
    nullable: bool = False,
) -> Any:
    if name not in data:
        if default is _REQUIRED:
            raise BatchFileError(f"{where}.{name}: missing", name)
        return default
    value = data[name]
    if value is None and nullable:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BatchFileError(f"{where}.{name}: must be {_TYPE_NAMES[kind]}", name)
    return value


def _choice(
    data: dict[str, Any], name: str, where: str, choices: tuple[str, ...], default: Any = _REQUIRED
) -> Any:
    value = _get(data, name, where, str, default)
    if value not in choices:
        raise BatchFileError(f"{where}.{name}: must be one of {', '.join(choices)}", name)
    return value


def _sid(
    data: dict[str, Any], name: str, where: str, pattern: str, *, optional: bool = False
) -> Any:
    value = _get(data, name, where, str, None if optional else _REQUIRED, nullable=optional)
    if value is not None and not re.match(pattern, value):
        raise BatchFileError(f"{where}.{name}: must be {pattern[1:3]} and 32 hex digits", name)
    return value


def _time(data: dict[str, Any], name: str, where: str) -> datetime:
    try:
        return datetime.fromisoformat(_get(data, name, where, str))
    except ValueError:
        raise BatchFileError(f"{where}.{name}: must be an ISO 8601 date and time", name) from None


def _iso(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _line(exc: ValueError) -> int:
    return int(getattr(exc, "lineno", 0))
