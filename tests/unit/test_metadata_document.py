"""The metadata document beside the media: its builder, its schema, and where the
operator and the uploader's status writes carry it (pure parts, no I/O)."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.support import samples
from tests.unit.test_recording_rules import _setting
from voicevault.contract import ErrorCode
from voicevault.crds.recording import RecordingSpec, StorageSnapshot
from voicevault.crds.voicestoragesetting import MetadataObject
from voicevault.operator.admission import decide
from voicevault.operator.callbacks import callback_params
from voicevault.operator.settings import SettingView
from voicevault.operator.snapshot import take_snapshot
from voicevault.uploader import envelope
from voicevault.uploader.errors import fatal, transient
from voicevault.uploader.metadata import (
    SCHEMA_ID,
    RecordingFacts,
    StoredMedia,
    build_document,
    encode_document,
    metadata_object_key,
    metadata_target,
)
from voicevault.uploader.recordingstatus import completed_patch, metadata_pending_patch
from voicevault.uploader.transfer import UploadResult

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "recording-metadata.schema.json"
SID = "RE" + "ab" * 16
KEY = f"calls/{samples.ACCOUNT_SID}/{SID}.wav"
URL = f"https://recordings.s3.eu-west-1.amazonaws.com/{KEY}"
DETAILS = envelope.EncryptionDetails(
    public_key_sid="CR" + "1" * 32, encrypted_cek="c2VjcmV0LXdyYXBwZWQ=", iv="AAECAwQFBgcICQoL"
)
AT = "2026-11-25T12:00:00Z"


def schema_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def assert_valid(document: dict[str, Any]) -> None:
    """Every document a test builds or downloads goes through this."""
    errors = sorted(schema_validator().iter_errors(document), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


def _facts(**spec: Any) -> RecordingFacts:
    body = samples.recording(**spec)
    return RecordingFacts.from_spec(RecordingSpec.model_validate(body["spec"]), SID)


def _media(encryption: envelope.EncryptionDetails | None = None) -> StoredMedia:
    return StoredMedia(
        key=KEY,
        url=URL,
        size=1234,
        content_type="application/octet-stream" if encryption else "audio/x-wav",
        sha256="0f" * 32,
        encryption=encryption,
    )


def test_the_document_holds_the_recording_and_the_object() -> None:
    doc = build_document(_facts(), _media(), "1.2.3")
    assert doc["schema"] == SCHEMA_ID
    assert doc["account_sid"] == samples.ACCOUNT_SID and doc["recording_sid"] == SID
    assert doc["call_sid"] == samples.CALL_SID and doc["conference_sid"] is None
    assert (doc["source"], doc["channels"], doc["track"]) == ("StartCallRecordingAPI", 2, "both")
    assert doc["start_time"] == "2026-11-25T10:00:00Z" and doc["duration"] == 42
    assert doc["media"] == {
        "key": KEY,
        "url": URL,
        "size": 1234,
        "content_type": "audio/x-wav",
        "sha256": "0f" * 32,
    }
    assert doc["encryption_details"] is None and doc["voicevault_version"] == "1.2.3"
    assert_valid(doc)


def test_encryption_details_are_twilios_snake_case_without_key_material() -> None:
    doc = build_document(_facts(), _media(DETAILS), "1.2.3")
    assert doc["encryption_details"] == {
        "type": "rsa-aes",
        "public_key_sid": DETAILS.public_key_sid,
        "encrypted_cek": DETAILS.encrypted_cek,
        "iv": DETAILS.iv,
    }
    text = encode_document(doc).decode()
    assert "content_key" not in text and "publicKeySid" not in text
    assert_valid(doc)
    # the decrypt command takes the whole document as its --details
    assert envelope.EncryptionDetails.from_mapping(doc["encryption_details"]) == DETAILS


def test_start_time_is_utc_whatever_the_spec_wrote() -> None:
    doc = build_document(_facts(startTime="2026-11-25T11:30:00+01:30"), _media(), "1")
    assert doc["start_time"] == "2026-11-25T10:00:00Z"


def test_a_conference_recording_without_a_call() -> None:
    facts = _facts(callSid=None, conferenceSid="CF" + "2" * 32, source="Conference")
    doc = build_document(facts, _media(), "1")
    assert doc["call_sid"] is None and doc["conference_sid"] == "CF" + "2" * 32
    assert_valid(doc)


def test_encoding_is_stable_and_sorted() -> None:
    one = encode_document(build_document(_facts(), _media(DETAILS), "1"))
    two = encode_document(build_document(_facts(), _media(DETAILS), "1"))
    assert one == two and one.endswith(b"\n")
    keys = list(json.loads(one))
    assert keys == sorted(keys)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("media", "sha256"), "not-hex"),
        (("encryption_details", "content_key"), "AAAA"),  # key material is never allowed
        (("recording_sid",), "RE123"),
        (("start_time",), "yesterday"),
        (("extra",), 1),
    ],
)
def test_the_schema_refuses_what_voicevault_never_writes(
    path: tuple[str, ...], value: object
) -> None:
    doc = build_document(_facts(), _media(DETAILS), "1")
    node = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    assert list(schema_validator().iter_errors(doc)), f"{path} = {value!r} should be refused"


def test_the_key_sits_beside_the_media() -> None:
    assert metadata_object_key(KEY) == KEY + ".json"


# -- the setting, its snapshot and the batch item ----------------------------------------


def _view(metadata: dict[str, bool] | None) -> SettingView:
    view = _setting()
    assert view.spec is not None
    chosen = MetadataObject.model_validate(metadata) if metadata is not None else None
    return dataclasses.replace(view, spec=view.spec.model_copy(update={"metadata_object": chosen}))


def _snapshot(metadata: dict[str, bool] | None = None) -> StorageSnapshot:
    rec = RecordingSpec.model_validate(samples.recording()["spec"])
    return take_snapshot(_view(metadata), rec, SID, None)


def test_the_snapshot_names_the_document_only_when_the_setting_asks() -> None:
    on = _snapshot({"enabled": True})
    assert on.metadata_key == on.object_key + ".json"
    assert on.metadata_url == on.media_url + ".json"
    for off in (_snapshot(), _snapshot({"enabled": False})):
        assert off.metadata_key is None and off.metadata_url is None
        assert "metadataKey" not in off.to_wire()


def test_the_batch_item_carries_the_recordings_facts() -> None:
    spec = samples.recording()["spec"]
    target = metadata_target(spec, SID, _snapshot({"enabled": True}))
    assert target is not None and target.key.endswith(".wav.json")
    assert target.recording == _facts()
    assert metadata_target(spec, SID, _snapshot()) is None


def test_admission_accepts_the_setting_with_metadata_on() -> None:
    body = samples.setting()
    body["metadata"]["namespace"] = "acct"
    body["spec"]["metadataObject"] = {"enabled": True}
    review = {
        "uid": "u",
        "kind": {"group": "voicevault.io", "version": "v1alpha1", "kind": "VoiceStorageSetting"},
        "namespace": "acct",
        "name": "default",
        "operation": "CREATE",
        "object": body,
        "oldObject": None,
    }
    assert decide(review).allowed


# -- status and callback -----------------------------------------------------------------


def _result(metadata_url: str | None) -> UploadResult:
    return UploadResult(
        media_url=URL,
        key=KEY,
        size=1234,
        source_size=1218,
        encryption=DETAILS,
        sha256="0f" * 32,
        content_type="application/octet-stream",
        metadata_url=metadata_url,
    )


def test_completed_carries_the_metadata_url_and_condition() -> None:
    patch = completed_patch(_result(URL + ".json"), {"phase": "Uploading"}, AT)
    assert patch is not None and patch["phase"] == "Completed"
    assert patch["metadataUrl"] == URL + ".json"
    by_type = {c["type"]: (c["status"], c["reason"]) for c in patch["conditions"]}
    assert by_type == {"MetadataStored": ("True", "MetadataStored"), "Stored": ("True", "Uploaded")}
    plain = completed_patch(_result(None), {"phase": "Uploading"}, AT)
    assert plain is not None and "metadataUrl" not in plain
    assert [c["type"] for c in plain["conditions"]] == ["Stored"]


def test_a_pending_document_sets_the_media_url_and_says_so() -> None:
    earlier = {
        "type": "MetadataStored",
        "status": "False",
        "reason": "MetadataPending",
        "message": "x",
        "lastTransitionTime": "2026-11-25T11:00:00Z",
    }
    status = {"phase": "Uploading", "conditions": [earlier]}
    error = transient("PutObject failed: HTTP 503")
    patch = metadata_pending_patch(_result(None), error, URL + ".json", status, AT)
    assert patch is not None
    assert patch["mediaUrl"] == URL and "phase" not in patch and "metadataUrl" not in patch
    (cond,) = patch["conditions"]
    assert cond["status"] == "False" and cond["reason"] == "MetadataPending"
    assert URL + ".json" in cond["message"] and "next attempt" in cond["message"]
    assert cond["lastTransitionTime"] == "2026-11-25T11:00:00Z", "no flip, no new time"
    denied = fatal(ErrorCode.ACCESS_DENIED, "access denied")
    failed = metadata_pending_patch(_result(None), denied, URL + ".json", status, AT)
    assert failed is not None and failed["conditions"][0]["reason"] == "MetadataFailed"
    assert metadata_pending_patch(_result(None), error, "u", {"phase": "Completed"}, AT) is None


def test_the_callback_carries_the_metadata_url_once_completed() -> None:
    spec = RecordingSpec.model_validate(samples.recording()["spec"])
    done = {"phase": "Completed", "sid": SID, "mediaUrl": URL, "metadataUrl": URL + ".json"}
    assert callback_params(spec, done)["RecordingMetadataUrl"] == URL + ".json"
    assert "RecordingMetadataUrl" not in callback_params(spec, done | {"phase": "Failed"})
    assert "RecordingMetadataUrl" not in callback_params(spec, {"phase": "Completed", "sid": SID})


def test_facts_are_utc_aware() -> None:
    facts = _facts()
    assert facts.start_time == datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
