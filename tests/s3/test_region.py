"""A bucket outside us-east-1 behind a region-less (or stale) URL, on moto with the seed
policy enforced, reached by its AWS host names through the fault proxy in AWS mode: the
proxy answers wrong-region requests as S3 does, so botocore's own region redirector runs.
Validation finds the region; single PUT, multipart and resume succeed; a hint that names
no region is a clear refusal that keeps the media; a contradicted region is refused.
MinIO serving a region of its own gives its real wrong-region answer to the same code."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.bed.aws_names import AwsTls, LookupLog, aws_client_env, aws_tls, loopback_lookups_only
from tests.bed.faultproxy import AwsRegions, FaultProxy, ResetConnection, Rule
from tests.bed.fixtures import unique_name
from tests.bed.s3_common import S3Account
from tests.bed.s3_minio import MinioS3
from tests.bed.s3_moto import MotoS3
from tests.support.cli import ACCOUNT_SID
from voicevault.contract import BatchItem, BatchSpec
from voicevault.operator import settings
from voicevault.operator.settingcontroller import validate_bucket
from voicevault.uploader.batch import BatchSettings, run_batch
from voicevault.uploader.bucketurl import BucketLocation, parse_bucket_url
from voicevault.uploader.errors import UploadError
from voicevault.uploader.s3client import AwsKeys, make_client
from voicevault.uploader.state import StateStore
from voicevault.uploader.transfer import TransferConfig, UploadRequest, UploadResult, upload

pytestmark = [pytest.mark.s3, pytest.mark.timeout(120)]
MIB = 1 << 20
HOME = "eu-west-1"  # where the bucket is
STALE = "us-west-2"  # a region the bucket is not in
SMALL = TransferConfig(multipart_threshold=6 * MIB, part_size=5 * MIB, concurrency=2)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> AwsTls:
    return aws_tls(tmp_path_factory.mktemp("aws-tls"), [HOME, STALE])


@pytest.fixture
def account(moto_s3: MotoS3) -> S3Account:
    return moto_s3.add_bucket(unique_name("region"), "folder/for/storage", region=HOME)


@pytest.fixture
def lookups() -> Iterator[LookupLog]:
    with loopback_lookups_only() as log:
        yield log
    assert log.refused == [], f"something tried to resolve {log.refused}: traffic off loopback"


def _proxy(
    moto_s3: MotoS3, tls: AwsTls, account: S3Account, monkeypatch: pytest.MonkeyPatch, hints: bool
) -> FaultProxy:
    proxy = FaultProxy(
        moto_s3.endpoint_url,
        tls=tls.context,
        regions=AwsRegions({account.bucket: HOME}, hints=hints),
    ).start()
    for name, value in aws_client_env(proxy.url, tls.ca_bundle).items():
        monkeypatch.setenv(name, value)
    return proxy


@pytest.fixture
def proxy(
    moto_s3: MotoS3,
    tls: AwsTls,
    account: S3Account,
    monkeypatch: pytest.MonkeyPatch,
    lookups: LookupLog,
) -> Iterator[FaultProxy]:
    proxy = _proxy(moto_s3, tls, account, monkeypatch, hints=True)
    yield proxy
    proxy.stop()


@pytest.fixture
def hintless_proxy(
    moto_s3: MotoS3,
    tls: AwsTls,
    account: S3Account,
    monkeypatch: pytest.MonkeyPatch,
    lookups: LookupLog,
) -> Iterator[FaultProxy]:
    proxy = _proxy(moto_s3, tls, account, monkeypatch, hints=False)
    yield proxy
    proxy.stop()


def _url(account: S3Account, region: str | None = None) -> str:
    """The customer's virtual-host URL, with or without a region."""
    host = (
        f"{account.bucket}.s3.{region}.amazonaws.com"
        if region
        else f"{account.bucket}.s3.amazonaws.com"
    )
    return f"https://{host}/{account.prefix}"


def _keys(account: S3Account) -> AwsKeys:
    return AwsKeys(account.access_key_id, account.secret_access_key)


def _wrong_region_answers(proxy: FaultProxy) -> list[int | None]:
    return [r.status for r in proxy.requests if r.fault == "WrongRegion"]


def _open_uploads(moto_s3: MotoS3, account: S3Account) -> list[str]:
    page = moto_s3.admin_client().list_multipart_uploads(Bucket=account.bucket)
    return [u["Key"] for u in page.get("Uploads", [])]


def _upload(
    location: BucketLocation, account: S3Account, media: Path, sid: str, state: Path
) -> tuple[str, UploadResult]:
    key = location.object_key(ACCOUNT_SID, sid, ".wav")
    request = UploadRequest(
        source=media, location=location, key=key, content_type="audio/x-wav", state_name=sid
    )
    client = make_client(location, _keys(account))
    return key, upload(client, request, StateStore(state), SMALL)


# --- validation ---------------------------------------------------------------------------


def test_validation_finds_the_region_of_a_region_less_url(
    proxy: FaultProxy, moto_s3: MotoS3, account: S3Account
) -> None:
    location = parse_bucket_url(_url(account))
    assert location.region == "us-east-1" and location.named_region is None

    verdict = validate_bucket(make_client(location, _keys(account)), location)

    assert verdict.ok, verdict.message
    assert verdict.region == HOME
    assert HOME in verdict.message
    # S3's answer to a request signed for us-east-1, then botocore's redirected retry
    assert _wrong_region_answers(proxy) == [400]
    assert f"{account.bucket}.s3.amazonaws.com:443" in proxy.tunnels
    assert f"{account.bucket}.s3.{HOME}.amazonaws.com:443" in proxy.tunnels
    assert proxy.stats().requests.get(("HEAD", "HeadBucket"), 0) == 0, "no HeadBucket fallback"
    assert _open_uploads(moto_s3, account) == [], "the test upload was aborted"
    # what the setting then shows and what its recordings are signed for
    status = settings.known_region(verdict, {}, 1)
    assert status == HOME


def test_a_named_region_the_bucket_contradicts_is_refused(
    proxy: FaultProxy, moto_s3: MotoS3, account: S3Account
) -> None:
    location = parse_bucket_url(_url(account, STALE))

    verdict = validate_bucket(make_client(location, _keys(account)), location)

    assert not verdict.ok
    assert verdict.reason == "RegionMismatch"
    assert f"is in region {HOME!r}" in verdict.message and repr(STALE) in verdict.message
    assert settings.refusal(verdict, {}, 1) is not None, "the setting is not Ready"
    # the regional endpoint of another region answers with a 301 naming the region
    assert _wrong_region_answers(proxy) == [301]
    assert _open_uploads(moto_s3, account) == []


def test_a_region_override_the_bucket_contradicts_is_refused(
    proxy: FaultProxy, account: S3Account
) -> None:
    location = parse_bucket_url(_url(account), region=STALE)

    verdict = validate_bucket(make_client(location, _keys(account)), location)

    assert (verdict.ok, verdict.reason) == (False, "RegionMismatch")


# --- uploads ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1234, 12 * MIB + 5], ids=["single-put", "multipart"])
@pytest.mark.parametrize(
    "signed_for", [None, STALE, HOME], ids=["region-less", "stale-region", "found-region"]
)
def test_uploads_succeed_whatever_region_they_start_signing_for(
    proxy: FaultProxy,
    moto_s3: MotoS3,
    account: S3Account,
    tmp_path: Path,
    size: int,
    signed_for: str | None,
) -> None:
    """`signed_for`: the snapshot's region (None: none known, us-east-1 is signed for)."""
    media = tmp_path / "call.wav"
    data = os.urandom(size)
    media.write_bytes(data)
    location = parse_bucket_url(_url(account), region=signed_for)

    key, result = _upload(location, account, media, "RE" + "a" * 32, tmp_path / "state")

    stored = moto_s3.admin_client().get_object(Bucket=account.bucket, Key=key)["Body"].read()
    assert stored == data
    assert result.media_url == f"https://{account.bucket}.s3.amazonaws.com/{key}", (
        "mediaUrl keeps the form the customer wrote"
    )
    expected = {None: [400], STALE: [301], HOME: []}[signed_for]
    assert _wrong_region_answers(proxy) == expected, "one redirect, then the client knows"


def test_resume_through_a_region_redirect(
    proxy: FaultProxy, moto_s3: MotoS3, account: S3Account, tmp_path: Path
) -> None:
    media = tmp_path / "long-call.wav"
    data = os.urandom(3 * 5 * MIB - 77)
    media.write_bytes(data)
    state = tmp_path / "state"
    location = parse_bucket_url(_url(account))
    sid = "RE" + "b" * 32
    # the first part is stored; every later one is cut off in flight
    cut = proxy.add_rule(
        Rule(ResetConnection(after_request_bytes=1024), query_contains="partNumber", after=1)
    )
    with pytest.raises(UploadError) as failed:
        _upload(location, account, media, sid, state)
    assert not failed.value.fatal
    assert cut.applied > 0
    saved = StateStore(state).load(sid)
    assert saved is not None and saved.upload_id, "the resume state is kept"
    proxy.clear_rules()

    # a new client, as a new uploader pod has: it meets the wrong region again
    key, result = _upload(location, account, media, sid, state)

    assert result.resumed and result.parts_skipped == 1
    stored = moto_s3.admin_client().get_object(Bucket=account.bucket, Key=key)["Body"].read()
    assert stored == data
    assert _wrong_region_answers(proxy) == [400, 400]
    assert _open_uploads(moto_s3, account) == []


# --- a hint that names no region ------------------------------------------------------------


@dataclass
class _Reporter:
    errors: list[UploadError] = field(default_factory=list)

    def progress(self, item: BatchItem, sent: int, total: int) -> bool:
        return True

    def completed(self, item: BatchItem, result: UploadResult) -> bool:
        raise AssertionError("nothing can be stored without the bucket's region")

    def failed(self, item: BatchItem, error: UploadError, media_deleted: bool) -> bool:
        self.errors.append(error)
        return True

    def metadata_pending(self, item: BatchItem, result: UploadResult, error: UploadError) -> bool:
        raise AssertionError("no metadata document without a stored media object")


def test_a_hint_without_region_refuses_the_setting_and_keeps_the_media(
    hintless_proxy: FaultProxy, moto_s3: MotoS3, account: S3Account, tmp_path: Path
) -> None:
    location = parse_bucket_url(_url(account))

    verdict = validate_bucket(make_client(location, _keys(account)), location)

    assert (verdict.ok, verdict.reason) == (False, "RegionUnknown")
    assert "could not be found" in verdict.message and "bucketUrl" in verdict.message
    assert settings.refusal(verdict, {}, 1) == ("RegionUnknown", verdict.message)
    # botocore fell back to HeadBucket, which the seed policy denies
    heads = [r.status for r in hintless_proxy.requests if r.operation == "HeadBucket"]
    assert heads == [403]

    # a recording snapshotted before (signed for us-east-1) is retried, never deleted
    root = tmp_path / "recordings"
    media = root / "acct" / "call.wav"
    media.parent.mkdir(parents=True)
    media.write_bytes(os.urandom(2048))
    sid = "RE" + "c" * 32
    key = location.object_key(ACCOUNT_SID, sid, ".wav")
    item = BatchItem.from_dict(
        {
            "namespace": "acct",
            "name": "call",
            "uid": "uid-call",
            "sid": sid,
            "media_path": "call.wav",
            "bucket_url": _url(account),
            "endpoint_url": None,
            "region": "us-east-1",
            "bucket": account.bucket,
            "object_key": key,
            "media_url": location.object_url(key),
            "credential": "c0",
        }
    )
    reporter = _Reporter()
    outcome = run_batch(
        BatchSpec(pod="pod-1", node="node-1", items=[item]),
        BatchSettings(media_root=root, state_dir=root / ".state", transfer=SMALL),
        reporter,
        lambda it: make_client(
            parse_bucket_url(it.bucket_url, endpoint_url=it.endpoint_url, region=it.region),
            _keys(account),
        ),
        threading.Event(),
    )

    result = outcome.results[0]
    assert result is not None and result.kind == "transient", result
    assert result.message is not None and "PermanentRedirect" in result.message
    assert reporter.errors == [], "no Failed report: nothing fatal happened"
    assert media.exists(), "the media is kept"


# --- a real S3-compatible store in a region of its own ---------------------------------------

ONPREM = "eu-onprem-1"


@pytest.fixture(scope="module")
def regional_minio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinioS3]:
    """MinIO serving one region that is not us-east-1: its own wrong-region answers."""
    with MinioS3(tmp_path_factory.mktemp("minio-onprem"), region=ONPREM) as server:
        yield server


def test_minio_validation_finds_its_region_and_uploads_sign_for_it(
    regional_minio: MinioS3, tmp_path: Path
) -> None:
    account = regional_minio.add_bucket(unique_name("onprem"), "calls", region=ONPREM)
    endpoint = regional_minio.endpoint_url
    url = f"{endpoint}/{account.bucket}/{account.prefix}"
    location = parse_bucket_url(url, endpoint_url=endpoint)
    assert location.region == "us-east-1" and location.named_region is None

    verdict = validate_bucket(make_client(location, _keys(account)), location)

    assert verdict.ok, verdict.message
    assert verdict.region == ONPREM
    # what the snapshot then carries: signed for MinIO's region, the URL as written
    found = settings.located(
        settings.SettingEvaluation(True, "Configured", "ok", location=location), verdict, {}, 1
    ).location
    assert found is not None and found.region == ONPREM
    media = tmp_path / "call.wav"
    data = os.urandom(7 * MIB)
    media.write_bytes(data)
    key, result = _upload(found, account, media, "RE" + "d" * 32, tmp_path / "state")
    stored = regional_minio.admin_client().get_object(Bucket=account.bucket, Key=key)
    assert stored["Body"].read() == data
    assert result.media_url == f"{url}{key.removeprefix(account.prefix)}"
