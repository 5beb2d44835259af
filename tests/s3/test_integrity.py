"""Integrity, proven against MinIO, which verifies checksums (moto accepts anything):
a byte flipped in flight is rejected by the server, re-sent, and the object stays exact."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from tests.bed.faultproxy import CorruptRequestByte, FaultProxy, Rule
from tests.bed.s3_common import S3Account, S3Server
from tests.support.cli import ACCOUNT_SID
from tests.support.keys import key_pair
from voicevault.uploader import envelope
from voicevault.uploader.bucketurl import parse_bucket_url
from voicevault.uploader.s3client import AwsKeys, make_client
from voicevault.uploader.state import StateStore
from voicevault.uploader.transfer import EncryptionKey, TransferConfig, UploadRequest, upload

pytestmark = pytest.mark.s3
MIB = 1 << 20


@pytest.mark.parametrize(
    ("size", "target"),
    [(12 * MIB + 5, "partNumber=2"), (3 * MIB, None)],
    ids=["part", "single-put"],
)
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_corrupted_body_is_rejected_and_resent(
    minio_s3: S3Server,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    size: int,
    target: str | None,
    encrypted: bool,
) -> None:
    from tests.bed.fixtures import unique_name

    account: S3Account = minio_s3.add_bucket(unique_name("integrity"), "calls/")
    media = tmp_path / "call.wav"
    data = os.urandom(size)
    media.write_bytes(data)
    with FaultProxy(minio_s3.endpoint_url) as proxy:
        rule = proxy.add_rule(
            Rule(
                action=CorruptRequestByte(offset=4321), method="PUT", query_contains=target, times=1
            )
        )
        location = parse_bucket_url(
            f"{proxy.url}/{account.bucket}/calls/", endpoint_url=proxy.url, region=account.region
        )
        key = location.object_key(ACCOUNT_SID, "RE" + "c" * 32, ".wav")
        encryption = None
        if encrypted:
            public = envelope.load_public_key(key_pair().public_pem)
            encryption = EncryptionKey(public, envelope.public_key_sid(public))
        request = UploadRequest(media, location, key, "audio/x-wav", encryption, "RE" + "c" * 32)
        client = make_client(location, AwsKeys(account.access_key_id, account.secret_access_key))
        with caplog.at_level(logging.WARNING, logger="voicevault.uploader"):
            result = upload(
                client,
                request,
                StateStore(tmp_path / "state"),
                TransferConfig(part_size=5 * MIB, concurrency=2, multipart_threshold=6 * MIB),
            )
    assert rule.applied == 1, "one body was corrupted in flight"
    assert result.parts_resent == 1, "the server rejected it and it was sent again"
    assert any(getattr(r, "event", "") == "part_resent" for r in caplog.records)
    stored = minio_s3.admin_client().get_object(Bucket=account.bucket, Key=key)["Body"].read()
    if encrypted:
        assert result.encryption is not None
        content_key = envelope.open_content_key(key_pair().private_pem, result.encryption)
        obj, plain = tmp_path / "obj", tmp_path / "plain"
        obj.write_bytes(stored)
        with obj.open("rb") as src, plain.open("wb") as dst:
            envelope.decrypt_stream(content_key, src, dst, len(stored))
        assert plain.read_bytes() == data
    else:
        assert stored == data


def test_resumed_upload_checks_skipped_parts_against_server_checksums(
    minio_s3: S3Server, tmp_path: Path
) -> None:
    """ListParts on MinIO returns each part's SHA-256: a part that differs is sent again."""
    from tests.bed.fixtures import unique_name
    from voicevault.uploader.state import SourceFingerprint, UploadState

    account = minio_s3.add_bucket(unique_name("skipcheck"), "calls/")
    media = tmp_path / "call.wav"
    data = os.urandom(12 * MIB)
    media.write_bytes(data)
    location = parse_bucket_url(
        f"{account.endpoint_url}/{account.bucket}/calls/",
        endpoint_url=account.endpoint_url,
        region=account.region,
    )
    key = location.object_key(ACCOUNT_SID, "RE" + "d" * 32, ".wav")
    narrow = account.client()
    upload_id = narrow.create_multipart_upload(
        Bucket=account.bucket, Key=key, ChecksumAlgorithm="SHA256"
    )["UploadId"]
    # a stale part 1 with the right size but wrong bytes, as a crashed writer might leave
    narrow.upload_part(
        Bucket=account.bucket,
        Key=key,
        UploadId=upload_id,
        PartNumber=1,
        Body=os.urandom(5 * MIB),
        ChecksumAlgorithm="SHA256",
    )
    store = StateStore(tmp_path / "state")
    store.save(
        "RE" + "d" * 32,
        UploadState(
            bucket=account.bucket,
            key=key,
            source=SourceFingerprint.of(media),
            part_size=5 * MIB,
            object_size=len(data),
            upload_id=upload_id,
        ),
    )
    request = UploadRequest(media, location, key, "audio/x-wav", None, "RE" + "d" * 32)
    client = make_client(location, AwsKeys(account.access_key_id, account.secret_access_key))
    result = upload(
        client, request, store, TransferConfig(part_size=5 * MIB, multipart_threshold=6 * MIB)
    )
    assert result.parts_skipped == 0 and result.parts_sent == 3, (
        "the mismatching part was not trusted"
    )
    assert minio_s3.admin_client().get_object(Bucket=account.bucket, Key=key)["Body"].read() == data


def test_batch_outcome_counts_the_resent_part(minio_s3: S3Server, tmp_path: Path) -> None:
    """What the operator's voicevault_upload_parts_resent_total adds up, from a pod's batch."""
    import threading

    from tests.bed.fixtures import unique_name
    from voicevault.contract import BatchItem, BatchSpec
    from voicevault.uploader.batch import BatchSettings, run_batch

    account = minio_s3.add_bucket(unique_name("batchresend"), "calls/")
    (tmp_path / "ns").mkdir()
    (tmp_path / "ns" / "x.wav").write_bytes(os.urandom(2 * MIB))

    class Accepting:
        def progress(self, *_: object) -> bool:
            return True

        def completed(self, *_: object) -> bool:
            return True

        def failed(self, *_: object) -> bool:
            return True

        def metadata_pending(self, *_: object) -> bool:
            return True

    with FaultProxy(minio_s3.endpoint_url) as proxy:
        proxy.add_rule(Rule(action=CorruptRequestByte(offset=99), method="PUT", times=1))
        url = f"{proxy.url}/{account.bucket}/calls/"
        item = BatchItem(
            namespace="ns",
            name="x",
            uid="u",
            sid="RE" + "e" * 32,
            media_path="x.wav",
            bucket_url=url,
            endpoint_url=proxy.url,
            region=account.region,
            bucket=account.bucket,
            object_key="calls/x.wav",
            media_url=url + "x.wav",
            credential="c",
        )
        keys = AwsKeys(account.access_key_id, account.secret_access_key)
        outcome = run_batch(
            BatchSpec(pod="p", node="n", items=[item]),
            BatchSettings(media_root=tmp_path, state_dir=tmp_path / "state"),
            Accepting(),
            lambda i: make_client(
                parse_bucket_url(i.bucket_url, endpoint_url=i.endpoint_url, region=i.region), keys
            ),
            threading.Event(),
        )
    assert outcome.results[0] is not None and outcome.results[0].kind == "completed"
    assert outcome.parts_resent == 1
