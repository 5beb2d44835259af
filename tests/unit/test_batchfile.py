"""The batch file: what the operator writes, the pod reads back; a bad one is named clearly."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

import pytest

from tests.support import samples
from voicevault import batchfile
from voicevault.contract import BatchFileError, BatchItem, BatchSpec, CredentialFile
from voicevault.crds.recording import RecordingSpec
from voicevault.uploader.metadata import MetadataTarget, RecordingFacts

SID = "RE" + "a" * 32
FACTS = RecordingFacts(
    account_sid="AC" + "b" * 32,
    recording_sid=SID,
    call_sid="CA" + "c" * 32,
    source="DialVerb",
    channels=2,
    track="inbound",
    start_time=datetime(2026, 11, 25, 10, 0, 5, tzinfo=UTC),
    duration=42,
)


def _item(**changes: object) -> BatchItem:
    item = samples.batch_item(
        namespace="ns",
        sid=SID,
        bucket_url="s3://bucket/calls",
        region="eu-west-1",
        bucket="bucket",
        media_url="https://bucket.s3.eu-west-1.amazonaws.com/calls/x.wav",
        metadata=MetadataTarget(
            key="calls/x.wav.json", url="https://b/x.wav.json", recording=FACTS
        ),
        resource_version="17",
        status={"sid": SID, "attempts": 1, "conditions": [{"type": "Stored"}]},
    )
    return dataclasses.replace(item, **changes)  # type: ignore[arg-type]


def test_a_written_batch_reads_back_equal() -> None:
    spec = BatchSpec(pod="p", node="n", items=[_item(), _item(metadata=None, action="purge")])
    assert BatchSpec.from_json(spec.to_json()) == spec
    assert BatchSpec.from_json(spec.to_json().encode()) == spec


def test_unknown_fields_are_ignored_and_defaults_filled() -> None:
    raw = json.loads(BatchSpec(pod="p", node="n", items=[_item(metadata=None)]).to_json())
    for name in ("action", "endpoint_url", "credential_name", "resource_version", "status"):
        del raw["items"][0][name]
    raw["items"][0]["new_in_a_later_operator"] = 1
    read = BatchSpec.from_json(json.dumps(raw)).items[0]
    assert (read.action, read.endpoint_url, read.status) == ("upload", None, {})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("pod"), "batch.pod: missing"),
        (lambda d: d.update(items={}), "batch.items: must be a list"),
        (lambda d: d["items"][0].update(region=5), "items[0].region: must be a string"),
        (lambda d: d["items"][0].update(action="copy"), "items[0].action: must be one of"),
        (
            lambda d: d["items"][0]["metadata"]["recording"].update(channels=3),
            "items[0].metadata.recording.channels: must be 1 or 2",
        ),
        (
            lambda d: d["items"][0]["metadata"]["recording"].update(call_sid="CA1"),
            "items[0].metadata.recording.call_sid: must be CA and 32 hex digits",
        ),
        (
            lambda d: d["items"][0]["metadata"]["recording"].update(start_time="noon"),
            "items[0].metadata.recording.start_time: must be an ISO 8601",
        ),
    ],
)
def test_a_bad_batch_names_the_field(change: object, message: str) -> None:
    raw = json.loads(BatchSpec(pod="p", node="n", items=[_item()]).to_json())
    change(raw)  # type: ignore[operator]
    with pytest.raises(BatchFileError) as caught:
        BatchSpec.from_json(json.dumps(raw))
    assert str(caught.value).startswith(message), str(caught.value)


def test_not_json_is_said_so() -> None:
    with pytest.raises(BatchFileError, match=r"batch.json is not JSON \(line 1\)"):
        BatchSpec.from_json("{")


def test_a_bad_credential_file_never_quotes_a_value() -> None:
    good = CredentialFile(access_key_id="AKIA-SECRET-ID", secret_access_key="S3CR3T").to_json()
    assert CredentialFile.from_json(good, "c.json").secret_access_key == "S3CR3T"
    bad = json.loads(good) | {"secret_access_key": ["S3CR3T"], "session_token": 7}
    with pytest.raises(BatchFileError) as caught:
        CredentialFile.from_json(json.dumps(bad), "c.json")
    assert str(caught.value) == "c.json.secret_access_key: must be a string"
    assert "S3CR3T" not in repr(caught.value) and "AKIA" not in repr(caught.value)


def test_the_facts_carry_the_recording_specs_field_names() -> None:
    """One name per field: RecordingFacts.from_spec copies RecordingSpec's fields by name."""
    spec_fields = set(RecordingSpec.model_fields)
    facts_fields = {f.name for f in dataclasses.fields(RecordingFacts)} - {"recording_sid"}
    assert facts_fields <= spec_fields, facts_fields - spec_fields


def test_the_facts_checks_match_the_recording_spec() -> None:
    """What the pod rejects in a batch, the CRD's model rejects too (and the reverse)."""
    from pydantic import ValidationError

    written = json.loads(
        batchfile.to_json(CredentialFile(access_key_id="a", secret_access_key="b"))
    )
    assert written == {"access_key_id": "a", "secret_access_key": "b", "session_token": None}
    base = json.loads(BatchSpec(pod="p", node="n", items=[_item()]).to_json())["items"][0]
    facts = base["metadata"]["recording"]
    spec_keys = {"accountSid", "callSid", "source", "channels", "track", "startTime", "duration"}
    good = samples.recording()["spec"] | {f: facts[_snake(f)] for f in spec_keys}
    RecordingSpec.model_validate(good)  # the base is valid: each case fails on its one field
    batchfile.read_facts(facts, "r")
    for field, bad in [("channels", 0), ("duration", -1), ("account_sid", "AC12"), ("track", "x")]:
        with pytest.raises(BatchFileError):
            batchfile.read_facts(facts | {field: bad}, "r")
        with pytest.raises(ValidationError):
            RecordingSpec.model_validate(good | {_camel(field): bad})


def _snake(camel: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in camel)


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(p.title() for p in rest)
