"""The uploader against real S3 servers (moto with IAM enforced, MinIO), with the seed
policy's narrow credentials: sizes, encryption, every bucket URL form, and the command."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.bed.fixtures import unique_name
from tests.bed.s3_common import S3Account, S3Server
from tests.bed.s3_minio import MinioS3
from tests.support.cli import ACCOUNT_SID, aws_env, endpoint_bucket_url, run, upload_args
from tests.support.keys import key_pair
from voicevault.uploader import envelope
from voicevault.uploader.bucketurl import parse_bucket_url
from voicevault.uploader.s3client import AwsKeys, make_client
from voicevault.uploader.state import StateStore
from voicevault.uploader.transfer import EncryptionKey, TransferConfig, UploadRequest, upload

pytestmark = pytest.mark.s3
MIB = 1 << 20
SMALL_CONFIG = TransferConfig(multipart_threshold=6 * MIB, part_size=5 * MIB, concurrency=3)


def _keys(account: S3Account) -> AwsKeys:
    return AwsKeys(account.access_key_id, account.secret_access_key)


def _stored(server: S3Server, account: S3Account, key: str) -> bytes:
    body: bytes = server.admin_client().get_object(Bucket=account.bucket, Key=key)["Body"].read()
    return body


def _open_uploads(server: S3Server, account: S3Account, key: str) -> list[str]:
    page = server.admin_client().list_multipart_uploads(Bucket=account.bucket, Prefix=key)
    return [u["UploadId"] for u in page.get("Uploads", []) if u["Key"] == key]


@pytest.mark.parametrize(
    "size", [0, 1, 5 * MIB + 7, 17 * MIB + 3], ids=["empty", "1B", "5MiB+", "17MiB+"]
)
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_upload_stores_exact_bytes(
    s3_server: S3Server, s3_account: S3Account, tmp_path: Path, size: int, encrypted: bool
) -> None:
    media = tmp_path / "call.wav"
    data = os.urandom(size)
    media.write_bytes(data)
    location = parse_bucket_url(
        endpoint_bucket_url(s3_account),
        endpoint_url=s3_account.endpoint_url,
        region=s3_account.region,
    )
    sid = "RE" + f"{size:032x}"
    key = location.object_key(ACCOUNT_SID, sid, ".wav")
    pair = key_pair()
    encryption = None
    if encrypted:
        public = envelope.load_public_key(pair.public_pem)
        encryption = EncryptionKey(public, envelope.public_key_sid(public))
    request = UploadRequest(
        source=media,
        location=location,
        key=key,
        content_type="audio/x-wav",
        encryption=encryption,
        state_name=sid,
    )
    result = upload(
        make_client(location, _keys(s3_account)),
        request,
        StateStore(tmp_path / "state"),
        SMALL_CONFIG,
    )

    stored = _stored(s3_server, s3_account, key)
    assert result.media_url == location.object_url(key)
    multipart = len(stored) > SMALL_CONFIG.multipart_threshold
    assert result.parts_sent == (-(-len(stored) // SMALL_CONFIG.part_size) if multipart else 1)
    if encrypted:
        assert result.encryption is not None
        assert len(stored) == size + envelope.TAG_SIZE
        content_key = envelope.open_content_key(pair.private_pem, result.encryption)
        out = tmp_path / "plain"
        with (tmp_path / "obj").open("wb") as f:
            f.write(stored)
        with (tmp_path / "obj").open("rb") as src, out.open("wb") as dst:
            envelope.decrypt_stream(content_key, src, dst, len(stored))
        assert out.read_bytes() == data
    else:
        assert result.encryption is None
        assert stored == data
    assert _open_uploads(s3_server, s3_account, key) == []


AWS_FORMS = [
    "https://{bucket}.s3.us-east-1.amazonaws.com/{prefix}",
    "https://{bucket}.s3.amazonaws.com/{prefix}",
    "https://s3.us-east-1.amazonaws.com/{bucket}/{prefix}",
    "https://s3.amazonaws.com/{bucket}/{prefix}",
    "https://{bucket}.s3-us-east-1.amazonaws.com/{prefix}",
]


@pytest.mark.parametrize("form", AWS_FORMS)
@pytest.mark.parametrize("prefix", ["calls/", "", "deep/er/path/"], ids=["prefix", "root", "deep"])
def test_every_seed_url_form(s3_server: S3Server, tmp_path: Path, form: str, prefix: str) -> None:
    """AWS-shaped URLs as a customer writes them; requests go to the local endpoint."""
    account = s3_server.add_bucket(unique_name("form"), prefix)
    url = form.format(bucket=account.bucket, prefix=account.prefix)
    for variant in {url, url.rstrip("/") if account.prefix else url}:
        location = parse_bucket_url(variant, endpoint_url=account.endpoint_url)
        assert (location.bucket, location.prefix) == (account.bucket, account.prefix)
        media = tmp_path / "r.mp3"
        media.write_bytes(b"ID3" + os.urandom(100))
        key = location.object_key(ACCOUNT_SID, "RE" + "a" * 32, ".mp3")
        request = UploadRequest(source=media, location=location, key=key, content_type="audio/mpeg")
        result = upload(make_client(location, _keys(account)), request, StateStore(tmp_path / "s"))
        assert _stored(s3_server, account, key) == media.read_bytes()
        # mediaUrl keeps the customer's style: their host (and bucket path), then the key
        assert result.media_url == form.format(bucket=account.bucket, prefix="") + key


def test_command_prints_json_and_keeps_the_file(s3_account: S3Account, tmp_path: Path) -> None:
    media = tmp_path / "call.wav"
    media.write_bytes(os.urandom(3000))
    _, public = key_pair().write(tmp_path)
    proc = run(
        upload_args(
            media, s3_account, tmp_path / "state", recording_sid="RE" + "b" * 32, public_key=public
        ),
        env=aws_env(s3_account),
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["bytes"] == 3000 + envelope.TAG_SIZE
    assert out["mediaUrl"].endswith(f"{ACCOUNT_SID}/RE{'b' * 32}.wav")
    assert out["encryptionDetails"]["type"] == "rsa-aes"
    assert media.exists(), "by hand, the user's file is kept unless --delete-source"


def test_command_round_trip_through_decrypt(
    s3_server: S3Server, s3_account: S3Account, tmp_path: Path
) -> None:
    media = tmp_path / "call.wav"
    data = os.urandom(7 * MIB + 11)
    media.write_bytes(data)
    private, public = key_pair().write(tmp_path)
    proc = run(
        upload_args(
            media,
            s3_account,
            tmp_path / "state",
            recording_sid="RE" + "c" * 32,
            public_key=public,
            extra=["--part-size", "5", "--delete-source"],
        ),
        env=aws_env(s3_account),
    )
    assert proc.returncode == 0, proc.stderr
    details = json.loads(proc.stdout)["encryptionDetails"]
    original = tmp_path / "original"
    obj = tmp_path / "object.bin"
    obj.write_bytes(_stored(s3_server, s3_account, f"calls/{ACCOUNT_SID}/RE{'c' * 32}.wav"))
    assert not media.exists()
    twilio_form = json.dumps(envelope.EncryptionDetails.from_mapping(details).to_twilio())
    decrypted = run(
        [
            "decrypt",
            "--private-key",
            str(private),
            "--details",
            twilio_form,
            str(obj),
            str(original),
        ]
    )
    assert decrypted.returncode == 0, decrypted.stderr
    assert original.read_bytes() == data


def test_s3_compatible_store_with_its_own_region_name(tmp_path: Path) -> None:
    """A MinIO site named "dc1": not an AWS region, yet the setting a user would write."""
    with MinioS3(tmp_path / "minio", region="dc1") as server:
        account = server.add_bucket(unique_name("dc1"), "voice/")
        media = tmp_path / "call.wav"
        data = os.urandom(6 * MIB + 5)
        media.write_bytes(data)
        sid = "RE" + "d" * 32
        proc = run(
            upload_args(
                media, account, tmp_path / "state", recording_sid=sid, extra=["--part-size", "5"]
            ),
            env=aws_env(account),
        )
        assert proc.returncode == 0, proc.stderr
        key = f"voice/{ACCOUNT_SID}/{sid}.wav"
        assert (
            json.loads(proc.stdout)["mediaUrl"] == f"{account.endpoint_url}/{account.bucket}/{key}"
        )
        assert _stored(server, account, key) == data


def test_usage_errors_exit_2_with_one_line(s3_account: S3Account, tmp_path: Path) -> None:
    media = tmp_path / "x.wav"
    media.write_bytes(b"x")
    cases = [
        (["upload", str(media), "--bucket-url", "ftp://bucket/x"], aws_env(s3_account)),
        (
            [
                "upload",
                str(tmp_path / "missing.wav"),
                "--bucket-url",
                "https://b.s3.amazonaws.com/",
            ],
            aws_env(s3_account),
        ),
        (
            ["upload", str(media), "--bucket-url", "https://b.s3.amazonaws.com/"],
            {"PATH": os.environ["PATH"]},
        ),
    ]
    for args, env in cases:
        proc = run(args, env=env)
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "Traceback" not in proc.stderr
