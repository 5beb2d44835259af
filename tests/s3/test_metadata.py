"""The metadata document beside the media, on both S3 servers (moto with the seed policy
enforced, MinIO): written after the media, valid against its schema, its SHA-256 that of
the stored object, written once and unchanged across a crash between the two PUTs, and
failing by the media's transient/fatal rules."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.bed.faultproxy import Blackhole, FaultProxy, Respond, Rule
from tests.bed.s3_common import S3Account, S3Server
from tests.s3.test_batch import Reporter, _item, _media, _run
from tests.support.cli import ACCOUNT_SID, aws_env, run, upload_args, voicevault_argv
from tests.support.keys import key_pair
from tests.support.samples import CALL_SID
from tests.unit.test_metadata_document import assert_valid
from voicevault.contract import BatchItem
from voicevault.uploader.metadata import MetadataTarget, RecordingFacts, metadata_object_key
from voicevault.uploader.state import StateStore

pytestmark = pytest.mark.s3
MIB = 1 << 20
JSON_PUT = r"\.json$"


def _metadata_flags() -> list[str]:
    return [
        "--metadata",
        "--call-sid",
        CALL_SID,
        "--source",
        "DialVerb",
        "--channels",
        "2",
        "--track",
        "inbound",
        "--start-time",
        "2026-11-25T10:00:00Z",
        "--duration",
        "42",
    ]


def _object(server: S3Server, account: S3Account, key: str) -> bytes | None:
    admin = server.admin_client()
    listed = admin.list_objects_v2(Bucket=account.bucket, Prefix=key).get("Contents", [])
    if not any(o["Key"] == key for o in listed):
        return None
    return bytes(admin.get_object(Bucket=account.bucket, Key=key)["Body"].read())


def _document(server: S3Server, account: S3Account, media_key: str) -> dict[str, Any]:
    """The stored document, checked against its schema and against the stored media."""
    raw = _object(server, account, metadata_object_key(media_key))
    assert raw is not None, "the metadata document is in the bucket"
    document: dict[str, Any] = json.loads(raw)
    assert_valid(document)
    media = _object(server, account, media_key)
    assert media is not None
    assert document["media"]["sha256"] == hashlib.sha256(media).hexdigest(), "integrity"
    assert document["media"]["size"] == len(media)
    assert document["media"]["key"] == media_key
    assert document["media"]["url"].endswith("/" + media_key)
    return document


def _json_puts(proxy: FaultProxy, *, forwarded: bool = True) -> int:
    return sum(
        1
        for r in proxy.requests
        if r.method == "PUT" and r.path.endswith(".json") and (r.fault is None or not forwarded)
    )


def _media_sends(proxy: FaultProxy) -> int:
    stats = proxy.stats().requests
    media_puts = sum(
        1 for r in proxy.requests if r.method == "PUT" and not r.path.endswith(".json")
    )
    return media_puts + stats.get(("POST", "CompleteMultipartUpload"), 0)


def _wait(condition: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- by hand: voicevault upload --metadata ------------------------------------------------


@pytest.mark.parametrize("size", [300_000, 17 * MIB + 5], ids=["single-put", "multipart"])
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_upload_writes_a_valid_document_matching_the_stored_object(
    s3_server: S3Server, s3_account: S3Account, tmp_path: Path, size: int, encrypted: bool
) -> None:
    media = tmp_path / "call.wav"
    data = os.urandom(size)
    media.write_bytes(data)
    private, public = key_pair().write(tmp_path)
    sid = "RE" + ("1" if encrypted else "2") * 32
    args = upload_args(
        media,
        s3_account,
        tmp_path / "state",
        recording_sid=sid,
        public_key=public if encrypted else None,
        extra=["--part-size", "5", *_metadata_flags()],
    )
    proc = run(args, env=aws_env(s3_account))
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    key = f"calls/{ACCOUNT_SID}/{sid}.wav"
    assert printed["metadataUrl"] == printed["mediaUrl"] + ".json"
    document = _document(s3_server, s3_account, key)
    assert (document["account_sid"], document["recording_sid"]) == (ACCOUNT_SID, sid)
    assert (document["call_sid"], document["source"]) == (CALL_SID, "DialVerb")
    assert (document["channels"], document["track"], document["duration"]) == (2, "inbound", 42)
    assert document["start_time"] == "2026-11-25T10:00:00Z"
    assert document["media"]["url"] == printed["mediaUrl"]
    assert StateStore(tmp_path / "state").load(sid) is None, "state wiped after both"
    if not encrypted:
        assert document["encryption_details"] is None
        assert document["media"]["content_type"] == "audio/x-wav"
        return
    assert document["encryption_details"]["public_key_sid"].startswith("CR")
    assert document["media"]["content_type"] == "application/octet-stream"
    # the document is all a customer needs next to the object and their private key
    (tmp_path / "obj").write_bytes(_object(s3_server, s3_account, key) or b"")
    (tmp_path / "doc.json").write_text(json.dumps(document))
    opened = run(
        [
            "decrypt",
            "--private-key",
            str(private),
            "--details",
            str(tmp_path / "doc.json"),
            str(tmp_path / "obj"),
            str(tmp_path / "plain"),
        ]
    )
    assert opened.returncode == 0, opened.stderr
    assert (tmp_path / "plain").read_bytes() == data


def test_upload_metadata_flags_are_checked(
    s3_server: S3Server, s3_account: S3Account, tmp_path: Path
) -> None:
    media = tmp_path / "call.wav"
    media.write_bytes(b"x" * 100)
    base = upload_args(media, s3_account, tmp_path / "state", recording_sid="RE" + "3" * 32)
    cases = {
        "--metadata needs --source": [*base, "--metadata", "--call-sid", CALL_SID],
        "--call-sid is part of the metadata document": [*base, "--call-sid", CALL_SID],
        "--start-time": [*_metadata_flags()[:-4], "--start-time", "noon", "--duration", "1"],
    }
    cases["--start-time"] = [*base, *cases["--start-time"]]
    for expected, args in cases.items():
        proc = run(args, env=aws_env(s3_account))
        assert proc.returncode == 2 and expected in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    listed = s3_server.admin_client().list_objects_v2(Bucket=s3_account.bucket)
    assert not listed.get("Contents"), "nothing was uploaded"


@pytest.mark.parametrize("size", [300_000, 17 * MIB + 5], ids=["single-put", "multipart"])
def test_crash_between_the_two_puts_writes_the_document_once_with_the_same_content(
    s3_server: S3Server, s3_account: S3Account, tmp_path: Path, size: int
) -> None:
    media = tmp_path / "call.wav"
    media.write_bytes(os.urandom(size))
    _, public = key_pair().write(tmp_path)
    sid = "RE" + "4" * 32
    key = f"calls/{ACCOUNT_SID}/{sid}.wav"
    state_dir = tmp_path / "state"
    with FaultProxy(s3_server.endpoint_url) as proxy:
        args = upload_args(
            media,
            s3_account,
            state_dir,
            recording_sid=sid,
            endpoint=proxy.url,
            public_key=public,
            extra=["--part-size", "5", *_metadata_flags()],
        )
        # the document's PUT hangs: the uploader dies with the media stored, the JSON not
        proxy.add_rule(Rule(action=Blackhole(), method="PUT", path_regex=JSON_PUT))
        first = subprocess.Popen(
            voicevault_argv(*args),
            env=aws_env(s3_account),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            _wait(lambda: _json_puts(proxy, forwarded=False) > 0, "the document's PUT")
        finally:
            first.send_signal(signal.SIGKILL)
            first.communicate(timeout=30)
        assert _object(s3_server, s3_account, key) is not None, "the media is stored"
        assert _object(s3_server, s3_account, key + ".json") is None, "the document is not"
        saved = StateStore(state_dir).load(sid)
        assert saved is not None and saved.metadata is not None and not saved.metadata.stored
        planned = saved.metadata.document
        proxy.clear_rules()
        media_before, json_before = _media_sends(proxy), _json_puts(proxy)

        second = run(args, env=aws_env(s3_account))

        assert second.returncode == 0, second.stderr
        assert _media_sends(proxy) == media_before, "the media was not sent again"
        assert _json_puts(proxy) - json_before == 1, "the document was written exactly once"
    stored = _object(s3_server, s3_account, key + ".json")
    assert stored is not None and stored.decode() == planned, "the content the first run built"
    _document(s3_server, s3_account, key)


def test_a_crash_mid_media_leaves_no_document_and_the_resumed_digest_is_right(
    s3_server: S3Server, s3_account: S3Account, tmp_path: Path
) -> None:
    media = tmp_path / "call.wav"
    media.write_bytes(os.urandom(6 * 5 * MIB - 99))
    sid = "RE" + "5" * 32
    key = f"calls/{ACCOUNT_SID}/{sid}.wav"
    with FaultProxy(s3_server.endpoint_url) as proxy:
        args = upload_args(
            media,
            s3_account,
            tmp_path / "state",
            recording_sid=sid,
            endpoint=proxy.url,
            extra=["--part-size", "5", "--concurrency", "1", *_metadata_flags()],
        )
        proxy.add_rule(Rule(action=Blackhole(), method="PUT", query_contains="partNumber", after=2))
        first = subprocess.Popen(
            voicevault_argv(*args),
            env=aws_env(s3_account),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            _wait(lambda: any(r.fault == "Blackhole" for r in proxy.requests), "a hanging part")
        finally:
            first.send_signal(signal.SIGKILL)
            first.communicate(timeout=30)
        assert _json_puts(proxy, forwarded=False) == 0, "no document before its media"
        proxy.clear_rules()
        second = run(args, env=aws_env(s3_account))
    assert second.returncode == 0, second.stderr
    # the digest covers the parts skipped on resume as well as those sent
    _document(s3_server, s3_account, key)


def test_a_failed_media_upload_writes_no_document(
    s3_server: S3Server, s3_account: S3Account, tmp_path: Path
) -> None:
    media = tmp_path / "call.wav"
    media.write_bytes(os.urandom(1000))
    sid = "RE" + "6" * 32
    with FaultProxy(s3_server.endpoint_url) as proxy:
        proxy.add_rule(Rule(action=Respond(503), method="PUT", path_regex=r"\.wav$"))
        args = upload_args(
            media,
            s3_account,
            tmp_path / "state",
            recording_sid=sid,
            endpoint=proxy.url,
            extra=_metadata_flags(),
        )
        proc = run(args, env=aws_env(s3_account))
        assert proc.returncode == 4, proc.stderr
        assert _json_puts(proxy, forwarded=False) == 0
    assert _object(s3_server, s3_account, f"calls/{ACCOUNT_SID}/{sid}.wav.json") is None


# -- in an uploader pod's batch ------------------------------------------------------------


def _with_metadata(item: BatchItem) -> BatchItem:
    facts = RecordingFacts(
        account_sid=ACCOUNT_SID,
        recording_sid=item.sid,
        call_sid=CALL_SID,
        source="StartCallRecordingAPI",
        start_time=datetime(2026, 11, 25, 10, 0, tzinfo=UTC),
        duration=7,
    )
    key = metadata_object_key(item.object_key)
    target = MetadataTarget(key=key, url=item.media_url + ".json", recording=facts)
    return dataclasses.replace(item, metadata=target)


def _state(root: Path) -> StateStore:
    return StateStore(root / ".voicevault" / "state")


@pytest.mark.parametrize("size", [4000, 11 * MIB], ids=["single-put", "multipart"])
def test_batch_completes_with_the_document_and_reports_its_url(
    s3_server: S3Server, s3_account: S3Account, tmp_path: Path, size: int
) -> None:
    path = _media(tmp_path, "a/x.wav", size)
    item = _with_metadata(_item(s3_account, "x", "a/x.wav"))
    reporter = Reporter()
    outcome = _run(s3_account, tmp_path, [item], reporter)
    assert outcome.results[0] is not None and outcome.results[0].kind == "completed"
    ((_, result),) = reporter.completed
    assert result.metadata_url == item.media_url + ".json"
    assert not path.exists() and _state(tmp_path).load(item.sid) is None
    document = _document(s3_server, s3_account, item.object_key)
    assert document["recording_sid"] == item.sid and document["duration"] == 7


def test_batch_transient_document_failure_keeps_media_and_resumes_with_only_the_document(
    s3_server: S3Server, s3_account: S3Account, tmp_path: Path
) -> None:
    path = _media(tmp_path, "x.wav", 11 * MIB)
    with FaultProxy(s3_server.endpoint_url) as proxy:
        item = _with_metadata(_item(s3_account, "x", "x.wav", endpoint=proxy.url))
        proxy.add_rule(Rule(action=Respond(503), method="PUT", path_regex=JSON_PUT))
        reporter = Reporter()
        first = _run(s3_account, tmp_path, [item], reporter).results[0]
        assert first is not None and first.kind == "transient" and first.error_code == 16111
        assert first.message.startswith("media stored; metadata document not stored")
        ((_, stored, error),) = reporter.metadata_pending
        assert stored.media_url == item.media_url and not error.fatal
        assert not reporter.completed and path.exists(), "kept until both are stored"
        assert _object(s3_server, s3_account, item.object_key) is not None
        assert _object(s3_server, s3_account, item.object_key + ".json") is None
        proxy.clear_rules()
        media_before, json_before = _media_sends(proxy), _json_puts(proxy)
        again = Reporter()
        second = _run(s3_account, tmp_path, [item], again).results[0]
        assert second is not None and second.kind == "completed"
        assert _media_sends(proxy) == media_before, "only the document was sent"
        assert _json_puts(proxy) - json_before == 1
    assert again.completed[0][1].metadata_url == item.media_url + ".json"
    assert not path.exists()
    _document(s3_server, s3_account, item.object_key)


def test_batch_fatal_document_failure_follows_the_fatal_rule(
    s3_server: S3Server, s3_account: S3Account, tmp_path: Path
) -> None:
    path = _media(tmp_path, "x.wav", 4000)
    with FaultProxy(s3_server.endpoint_url) as proxy:
        item = _with_metadata(_item(s3_account, "x", "x.wav", endpoint=proxy.url))
        proxy.add_rule(
            Rule(action=Respond(403, "AccessDenied", "Access Denied"), path_regex=JSON_PUT)
        )
        reporter = Reporter()
        result = _run(s3_account, tmp_path, [item], reporter).results[0]
    assert result is not None and result.kind == "fatal" and result.error_code == 16112
    assert reporter.metadata_pending and reporter.metadata_pending[0][2].fatal
    assert reporter.failed and reporter.media_deleted == [True]
    assert not path.exists(), "fatal: the media is deleted at once"
    assert _state(tmp_path).load(item.sid) is None
    assert _object(s3_server, s3_account, item.object_key + ".json") is None


def test_batch_document_for_an_object_stored_without_a_digest(
    s3_server: S3Server, s3_account: S3Account, tmp_path: Path
) -> None:
    """A completed state from a run that kept no digest: the bytes are hashed again."""
    _media(tmp_path, "x.wav", 11 * MIB)
    plain = _item(s3_account, "x", "x.wav", public_key=key_pair().public_pem.decode())
    first = _run(s3_account, tmp_path, [plain], Reporter(accept=False)).results[0]
    assert first is not None and first.kind == "completed-unrecorded"
    saved = _state(tmp_path).load(plain.sid)
    assert saved is not None and saved.sha256 is None
    second = _run(s3_account, tmp_path, [_with_metadata(plain)], Reporter()).results[0]
    assert second is not None and second.kind == "completed"
    _document(s3_server, s3_account, plain.object_key)
