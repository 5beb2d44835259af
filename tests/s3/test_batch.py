"""The uploader pod's batch logic against a real S3 server: what happens to the media on
the node after success, fatal and transient failures, and on purge."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.bed.faultproxy import CorruptRequestByte, FaultProxy, Respond, Rule
from tests.bed.fixtures import unique_name
from tests.bed.s3_common import S3Account, S3Server
from tests.support.cli import ACCOUNT_SID
from tests.support.keys import key_pair
from voicevault import logs
from voicevault.contract import (
    BATCH_FILE,
    BatchItem,
    BatchOutcome,
    BatchSpec,
    CredentialFile,
)
from voicevault.uploader import batch_command
from voicevault.uploader.batch import BatchSettings, run_batch
from voicevault.uploader.bucketurl import parse_bucket_url
from voicevault.uploader.errors import UploadError
from voicevault.uploader.parts import MAX_OBJECT_SIZE
from voicevault.uploader.s3client import AwsKeys, make_client
from voicevault.uploader.state import StateStore
from voicevault.uploader.transfer import TransferConfig, UploadResult

pytestmark = pytest.mark.s3
MIB = 1 << 20
NAMESPACE = "acct-a"


@dataclass
class Reporter:
    """Records what the batch reports; `accept` decides whether a write 'succeeds'."""

    accept: bool = True
    completed: list[tuple[str, UploadResult]] = field(default_factory=list)
    failed: list[tuple[str, UploadError]] = field(default_factory=list)
    progressed: list[tuple[str, int, int]] = field(default_factory=list)  # name, sent, total
    media_deleted: list[bool] = field(default_factory=list)  # one per failed report
    metadata_pending: list[tuple[str, UploadResult, UploadError]] = field(default_factory=list)

    def progress(self, item: BatchItem, sent: int, total: int) -> bool:
        self.progressed.append((item.name, sent, total))
        return self.accept

    def completed_(self, item: BatchItem, result: UploadResult) -> bool:
        self.completed.append((item.name, result))
        return self.accept

    def failed_(self, item: BatchItem, error: UploadError, media_deleted: bool) -> bool:
        self.failed.append((item.name, error))
        self.media_deleted.append(media_deleted)
        return self.accept


class _Adapter:
    def __init__(self, reporter: Reporter) -> None:
        self.r = reporter

    def progress(self, item: BatchItem, sent: int, total: int) -> bool:
        return self.r.progress(item, sent, total)

    def completed(self, item: BatchItem, result: UploadResult) -> bool:
        return self.r.completed_(item, result)

    def failed(self, item: BatchItem, error: UploadError, media_deleted: bool) -> bool:
        return self.r.failed_(item, error, media_deleted)

    def metadata_pending(self, item: BatchItem, result: UploadResult, error: UploadError) -> bool:
        self.r.metadata_pending.append((item.name, result, error))
        return self.r.accept


def _item(
    account: S3Account, name: str, media_path: str, endpoint: str | None = None, **extra: object
) -> BatchItem:
    endpoint = endpoint or account.endpoint_url
    bucket_url = f"{endpoint}/{account.bucket}/{account.prefix}"
    location = parse_bucket_url(bucket_url, endpoint_url=endpoint, region=account.region)
    sid = "RE" + name.encode().hex().ljust(32, "0")[:32]
    key = location.object_key(ACCOUNT_SID, sid, ".wav")
    fields: dict[str, object] = {
        "namespace": NAMESPACE,
        "name": name,
        "uid": f"uid-{name}",
        "sid": sid,
        "media_path": media_path,
        "bucket_url": bucket_url,
        "endpoint_url": endpoint,
        "region": account.region,
        "bucket": account.bucket,
        "object_key": key,
        "media_url": location.object_url(key),
        "credential": "c0",
    }
    return BatchItem.from_dict(fields | extra)


def _run(
    account: S3Account,
    root: Path,
    items: list[BatchItem],
    reporter: Reporter,
    secret: str | None = None,
    progress_interval: float = 10.0,
) -> BatchOutcome:
    """Run `items` with the credentials of `account` (and `secret`, if given)."""
    keys = AwsKeys(account.access_key_id, secret or account.secret_access_key)
    settings = BatchSettings(
        media_root=root,
        state_dir=root / ".voicevault" / "state",
        transfer=TransferConfig(multipart_threshold=6 * MIB, part_size=5 * MIB, concurrency=2),
        progress_interval=progress_interval,
    )

    def client_for(item: BatchItem):  # type: ignore[no-untyped-def]
        return make_client(
            parse_bucket_url(item.bucket_url, endpoint_url=item.endpoint_url, region=item.region),
            keys,
        )

    spec = BatchSpec(pod="pod-1", node="node-1", items=items)
    return run_batch(spec, settings, _Adapter(reporter), client_for, threading.Event())


def _media(root: Path, rel: str, size: int) -> Path:
    path = root / NAMESPACE / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def test_success_deletes_media_and_state(
    s3_server: S3Server, s3_account: S3Account, tmp_path: Path
) -> None:
    small, big = _media(tmp_path, "a/small.wav", 1000), _media(tmp_path, "a/big.wav", 11 * MIB)
    reporter = Reporter()
    items = [_item(s3_account, "small", "a/small.wav"), _item(s3_account, "big", "a/big.wav")]
    outcome = _run(s3_account, tmp_path, items, reporter)
    assert [r.kind if r else None for r in outcome.results] == ["completed", "completed"]
    assert not small.exists() and not big.exists(), "the platform keeps no copy"
    assert not list((tmp_path / ".voicevault" / "state").glob("*.json"))
    assert sorted(name for name, _ in reporter.completed) == ["big", "small"]


def test_unrecorded_success_keeps_media_and_records_later_without_reupload(
    s3_server: S3Server, s3_account: S3Account, tmp_path: Path
) -> None:
    big = _media(tmp_path, "big.wav", 11 * MIB)
    item = _item(s3_account, "big", "big.wav")
    first = _run(s3_account, tmp_path, [item], Reporter(accept=False))
    assert first.results[0] is not None and first.results[0].kind == "completed-unrecorded"
    assert big.exists(), "kept until the outcome is recorded"
    state = StateStore(tmp_path / ".voicevault" / "state").load(item.sid)
    assert state is not None and state.phase == "completed"
    reporter = Reporter()
    second = _run(s3_account, tmp_path, [item], reporter)
    assert second.results[0] is not None and second.results[0].kind == "completed"
    assert reporter.completed[0][1].parts_sent == 0, "recorded without sending again"
    assert not big.exists()


def test_fatal_deletes_media_at_once(s3_account: S3Account, tmp_path: Path) -> None:
    media = _media(tmp_path, "x.wav", 5000)
    reporter = Reporter()
    outcome = _run(
        s3_account, tmp_path, [_item(s3_account, "x", "x.wav")], reporter, secret="w" * 40
    )
    result = outcome.results[0]
    assert result is not None and result.kind == "fatal" and result.error_code == 16112
    assert not media.exists(), "fatal: deleted immediately (the seed's rule)"
    assert reporter.failed and reporter.failed[0][1].code == 16112
    assert reporter.media_deleted == [True]
    assert "w" * 40 not in result.message


def test_invalid_public_key_is_fatal_16104(s3_account: S3Account, tmp_path: Path) -> None:
    media = _media(tmp_path, "x.wav", 5000)
    item = _item(
        s3_account,
        "x",
        "x.wav",
        public_key="-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n",
    )
    outcome = _run(s3_account, tmp_path, [item], Reporter())
    assert outcome.results[0] is not None and outcome.results[0].error_code == 16104
    assert not media.exists()


def test_transient_keeps_media(s3_server: S3Server, s3_account: S3Account, tmp_path: Path) -> None:
    media = _media(tmp_path, "x.wav", 5000)
    with FaultProxy(s3_server.endpoint_url) as proxy:
        proxy.add_rule(Rule(action=Respond(503, "SlowDown", "slow down")))
        reporter = Reporter()
        outcome = _run(
            s3_account, tmp_path, [_item(s3_account, "x", "x.wav", endpoint=proxy.url)], reporter
        )
    result = outcome.results[0]
    assert result is not None and result.kind == "transient" and result.error_code == 16111
    assert "SlowDown" in result.message
    assert media.exists()
    assert not reporter.failed and not reporter.completed, "the operator decides what comes next"


def test_path_outside_the_namespace_folder_is_refused_and_nothing_deleted(
    s3_account: S3Account, tmp_path: Path
) -> None:
    other = tmp_path / "acct-b" / "secret.wav"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"another account's call")
    (tmp_path / NAMESPACE).mkdir()
    (tmp_path / NAMESPACE / "link.wav").symlink_to(other)
    items = [
        _item(s3_account, "link", "link.wav"),
        _item(s3_account, "dots", "../acct-b/secret.wav"),
    ]
    outcome = _run(s3_account, tmp_path, items, Reporter())
    for result in outcome.results:
        assert result is not None and result.kind == "fatal"
        assert "outside" in result.message or "relative" in result.message
    assert other.exists()


def test_missing_media_is_reported_with_its_path_and_nothing_deleted(
    s3_account: S3Account, tmp_path: Path
) -> None:
    (tmp_path / NAMESPACE).mkdir()
    reporter = Reporter()
    outcome = _run(s3_account, tmp_path, [_item(s3_account, "gone", "2026/11/gone.wav")], reporter)
    result = outcome.results[0]
    assert result is not None and result.kind == "fatal"
    assert "media file '2026/11/gone.wav' not found" in result.message
    assert str(tmp_path) not in result.message, "no host path beyond the account's folder"
    assert reporter.media_deleted == [False], "there was nothing to delete"


def test_purge_aborts_open_upload_and_removes_media(
    s3_server: S3Server, s3_account: S3Account, tmp_path: Path
) -> None:
    media = _media(tmp_path, "p.wav", 1000)
    item = _item(s3_account, "p", "p.wav", action="purge")
    s3_account.client().create_multipart_upload(Bucket=s3_account.bucket, Key=item.object_key)
    outcome = _run(s3_account, tmp_path, [item], Reporter())
    assert outcome.results[0] is not None and outcome.results[0].kind == "purged"
    assert not media.exists()
    page = s3_server.admin_client().list_multipart_uploads(
        Bucket=s3_account.bucket, Prefix=item.object_key
    )
    assert not page.get("Uploads")


def test_encrypted_batch_item(s3_server: S3Server, s3_account: S3Account, tmp_path: Path) -> None:
    _media(tmp_path, "e.wav", 3000)
    item = _item(s3_account, "e", "e.wav", public_key=key_pair().public_pem.decode())
    reporter = Reporter()
    outcome = _run(s3_account, tmp_path, [item], reporter)
    assert outcome.results[0] is not None and outcome.results[0].kind == "completed"
    result = reporter.completed[0][1]
    assert result.encryption is not None and result.size == 3016


def _open_uploads(server: S3Server, account: S3Account) -> list[object]:
    page = server.admin_client().list_multipart_uploads(Bucket=account.bucket)
    return list(page.get("Uploads", []))


@pytest.mark.parametrize(
    ("size", "encrypted"),
    [(MAX_OBJECT_SIZE + 1, False), (MAX_OBJECT_SIZE, True)],
    ids=["plain-5TiB+1", "encrypted-5TiB+tag"],
)
def test_recording_over_5_tib_is_fatal_before_any_request(
    s3_server: S3Server, s3_account: S3Account, tmp_path: Path, size: int, encrypted: bool
) -> None:
    """S3 cannot store it: refused before any request (none could succeed), media deleted."""
    media = tmp_path / NAMESPACE / "huge.wav"
    media.parent.mkdir(parents=True)
    media.touch()
    os.truncate(media, size)  # sparse: takes no disk
    key = {"public_key": key_pair().public_pem.decode()} if encrypted else {}
    reporter = Reporter()
    with FaultProxy(s3_server.endpoint_url) as proxy:
        item = _item(s3_account, "huge", "huge.wav", endpoint=proxy.url, **key)
        outcome = _run(s3_account, tmp_path, [item], reporter)
        requests = proxy.stats().requests
    result = outcome.results[0]
    assert result is not None and result.kind == "fatal" and result.error_code == 16111
    assert "larger than S3's 5 TiB object limit" in result.message
    assert reporter.failed and reporter.failed[0][1].code == 16111
    assert not media.exists(), "fatal: deleted immediately (the seed's rule)"
    assert requests == {}, "nothing was sent"
    assert not _open_uploads(s3_server, s3_account)
    assert not list((tmp_path / ".voicevault" / "state").glob("*.json"))


@pytest.mark.parametrize("size", [5000, 7 * MIB], ids=["single-put", "multipart"])
def test_credentials_of_another_bucket_are_fatal_and_delete_media(
    s3_server: S3Server, s3_account: S3Account, tmp_path: Path, size: int
) -> None:
    """Valid keys whose policy names another bucket: AccessDenied, fatal 16112."""
    other = s3_server.add_bucket(unique_name("other"), "calls/")
    media = _media(tmp_path, "x.wav", size)
    reporter = Reporter()
    outcome = _run(other, tmp_path, [_item(s3_account, "x", "x.wav")], reporter)
    result = outcome.results[0]
    assert result is not None and result.kind == "fatal" and result.error_code == 16112
    assert "AccessDenied" in result.message
    assert reporter.failed and reporter.failed[0][1].code == 16112
    assert not media.exists(), "fatal: deleted immediately (the seed's rule)"
    assert not _open_uploads(s3_server, s3_account)


@pytest.mark.parametrize("size", [5000, 7 * MIB], ids=["single-put", "multipart"])
def test_missing_bucket_is_fatal_16111(
    s3_server: S3Server, s3_account: S3Account, tmp_path: Path, size: int
) -> None:
    """Valid keys for a bucket that does not exist (any more): NoSuchBucket, fatal 16111."""
    s3_server.admin_client().delete_bucket(Bucket=s3_account.bucket)
    media = _media(tmp_path, "x.wav", size)
    reporter = Reporter()
    outcome = _run(s3_account, tmp_path, [_item(s3_account, "x", "x.wav")], reporter)
    result = outcome.results[0]
    assert result is not None and result.kind == "fatal" and result.error_code == 16111
    assert "NoSuchBucket" in result.message and "does not exist" in result.message
    assert reporter.failed[0][1].s3_code == "NoSuchBucket"
    assert not media.exists()


def test_progress_is_reported_while_uploading(
    s3_server: S3Server, s3_account: S3Account, tmp_path: Path
) -> None:
    """With a zero interval every part but the last writes Uploading with the bytes sent."""
    _media(tmp_path, "p.wav", 11 * MIB)  # three parts of at most 5 MiB
    reporter = Reporter()
    outcome = _run(
        s3_account, tmp_path, [_item(s3_account, "p", "p.wav")], reporter, progress_interval=0
    )
    assert outcome.results[0] is not None and outcome.results[0].kind == "completed"
    assert len(reporter.progressed) == 2, reporter.progressed
    for name, sent, total in reporter.progressed:
        assert name == "p" and total == 11 * MIB and 0 < sent < total


def test_batch_command_summary_counts_resent_parts(
    minio_s3: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`voicevault uploader` logs how many parts were re-sent after a checksum mismatch."""
    account = minio_s3.add_bucket(unique_name("summary"), "calls/")
    media = _media(tmp_path / "media", "x.wav", 2 * MIB)
    batch_dir = tmp_path / "batch"
    batch_dir.mkdir()
    (batch_dir / "c0").write_text(
        CredentialFile(
            access_key_id=account.access_key_id, secret_access_key=account.secret_access_key
        ).to_json()
    )
    monkeypatch.setattr(logs, "setup", lambda *_: None)  # keep caplog's handler
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path)))  # never contacted
    monkeypatch.setattr(
        batch_command, "KubeStatusReporter", lambda _api, _pod: _CountingAdapter(Reporter())
    )
    args = argparse.Namespace(
        batch_dir=batch_dir,
        media_root=tmp_path / "media",
        state_dir=None,
        termination_log=tmp_path / "termination-log",
        concurrency=1,
        part_concurrency=1,
        part_size=5,
        progress_interval=10.0,
        log_level="info",
        log_format="json",
    )
    previous = signal.getsignal(signal.SIGTERM)
    with FaultProxy(minio_s3.endpoint_url) as proxy:
        proxy.add_rule(Rule(action=CorruptRequestByte(offset=99), method="PUT", times=1))
        item = _item(account, "x", "x.wav", endpoint=proxy.url)
        spec = BatchSpec(pod="pod-1", node="node-1", items=[item])
        (batch_dir / BATCH_FILE).write_text(spec.to_json())
        try:
            with caplog.at_level(logging.INFO, logger="voicevault.uploader"):
                code = batch_command.run(args)
        finally:
            signal.signal(signal.SIGTERM, previous)
    assert code == 0
    assert not media.exists()
    done = [r for r in caplog.records if getattr(r, "event", "") == "batch_done"]
    assert len(done) == 1
    assert getattr(done[0], "parts_resent", None) == 1
    assert getattr(done[0], "completed", None) == 1
    assert "1 parts re-sent" in done[0].getMessage()
    assert '"p":1' in (tmp_path / "termination-log").read_text()


def _kubeconfig(tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    cluster = {"server": "https://127.0.0.1:9", "insecure-skip-tls-verify": True}
    config = {
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": {"token": "unused"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path.write_text(json.dumps(config))
    return path


class _CountingAdapter(_Adapter):
    """A stand-in for KubeStatusReporter: the batch command also reads `requests`."""

    requests = 0
