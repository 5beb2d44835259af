"""A killed upload resumes: only the missing parts are sent, the object is byte-identical,
and neither the secret key nor the content key shows up in any output."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bed.faultproxy import Blackhole, FaultProxy, Rule
from tests.bed.s3_common import S3Account, S3Server
from tests.support.cli import (
    ACCOUNT_SID,
    aws_env,
    endpoint_bucket_url,
    run,
    upload_args,
    voicevault_argv,
)
from tests.support.keys import key_pair
from voicevault.uploader import envelope
from voicevault.uploader.state import StateStore

pytestmark = [pytest.mark.s3, pytest.mark.slow]
MIB = 1 << 20
PART = 5 * MIB
SIZE = 9 * PART - 1234  # nine parts, the last one short


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    with FaultProxy(s3_server.endpoint_url) as p:
        yield p


def _wait_for_parts(
    server: S3Server, account: S3Account, key: str, count: int, timeout: float = 60
) -> str:
    """Poll the server (as admin) until the open upload of `key` holds `count` parts."""
    admin = server.admin_client()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        uploads = admin.list_multipart_uploads(Bucket=account.bucket, Prefix=key).get("Uploads", [])
        for u in uploads:
            parts = admin.list_parts(Bucket=account.bucket, Key=key, UploadId=u["UploadId"]).get(
                "Parts", []
            )
            if len(parts) >= count:
                return str(u["UploadId"])
        time.sleep(0.1)
    raise AssertionError(f"{count} parts of {key} never arrived")


def _upload_parts(proxy: FaultProxy) -> int:
    return proxy.stats().requests.get(("PUT", "UploadPart"), 0)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_sigkill_then_resume_sends_only_missing_parts(
    s3_server: S3Server, s3_account: S3Account, proxy: FaultProxy, tmp_path: Path, encrypted: bool
) -> None:
    media = tmp_path / "long-call.wav"
    data = os.urandom(SIZE)
    media.write_bytes(data)
    private, public = key_pair().write(tmp_path)
    sid = "RE" + ("e" if encrypted else "d") * 32
    key = f"calls/{ACCOUNT_SID}/{sid}.wav"
    state_dir = tmp_path / "state"

    def args_via(endpoint: str) -> list[str]:
        return upload_args(
            media,
            s3_account,
            state_dir,
            recording_sid=sid,
            endpoint=endpoint,
            public_key=public if encrypted else None,
            extra=["--part-size", "5", "--concurrency", "2"],
        )

    args = args_via(proxy.url)
    # the first three parts reach the server; every later part hangs until the kill
    proxy.add_rule(Rule(action=Blackhole(), method="PUT", query_contains="partNumber", after=3))
    first = subprocess.Popen(
        voicevault_argv(*args),
        env=aws_env(s3_account),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        upload_id = _wait_for_parts(s3_server, s3_account, key, 3)
    finally:
        first.send_signal(signal.SIGKILL)
        out1, err1 = first.communicate(timeout=30)
    saved = StateStore(state_dir).load(sid)
    assert saved is not None and saved.upload_id == upload_id, "the resume state survived the kill"
    raw_key = saved.encryption.content_key if saved.encryption else None
    # the resumed run goes through a proxy of its own: a hanging part the killed process
    # had sent may reach the first proxy's counters only after the kill (under load)
    with FaultProxy(s3_server.endpoint_url) as fresh:
        second = run(args_via(fresh.url), env=aws_env(s3_account))
        assert second.returncode == 0, second.stderr
        assert _upload_parts(fresh) == 9 - 3, "only the six missing parts were sent"
    stored = s3_server.admin_client().get_object(Bucket=s3_account.bucket, Key=key)["Body"].read()
    if encrypted:
        details = envelope.EncryptionDetails.from_mapping(
            json.loads(second.stdout)["encryptionDetails"]
        )
        content_key = envelope.open_content_key(private.read_bytes(), details)
        obj, plain = tmp_path / "obj", tmp_path / "plain"
        obj.write_bytes(stored)
        with obj.open("rb") as src, plain.open("wb") as dst:
            envelope.decrypt_stream(content_key, src, dst, len(stored))
        assert plain.read_bytes() == data
    else:
        assert stored == data
    assert StateStore(state_dir).load(sid) is None, "state (and content key) wiped after success"
    page = s3_server.admin_client().list_multipart_uploads(Bucket=s3_account.bucket, Prefix=key)
    assert not page.get("Uploads"), "no open multipart upload left behind"
    outputs = out1 + err1 + second.stdout + second.stderr
    assert s3_account.secret_access_key not in outputs
    if raw_key:
        assert raw_key not in outputs
        assert base64.b64decode(raw_key).hex() not in outputs


def test_orphan_upload_from_a_crash_before_the_state_was_saved_is_aborted(
    s3_server: S3Server, s3_account: S3Account, tmp_path: Path
) -> None:
    """An open upload of the same key that no state file knows is cleaned up, not leaked."""
    key = f"calls/{ACCOUNT_SID}/RE{'f' * 32}.wav"
    orphan = s3_account.client().create_multipart_upload(Bucket=s3_account.bucket, Key=key)[
        "UploadId"
    ]
    media = tmp_path / "x.wav"
    media.write_bytes(os.urandom(17 * MIB))
    proc = run(
        upload_args(
            media,
            s3_account,
            tmp_path / "state",
            recording_sid="RE" + "f" * 32,
            extra=["--part-size", "5"],
        ),
        env=aws_env(s3_account),
    )
    assert proc.returncode == 0, proc.stderr
    page = s3_server.admin_client().list_multipart_uploads(Bucket=s3_account.bucket, Prefix=key)
    assert orphan not in [u["UploadId"] for u in page.get("Uploads", [])]


def test_changed_media_starts_over(
    s3_server: S3Server, s3_account: S3Account, tmp_path: Path
) -> None:
    """A state file for different media bytes is never used to complete the upload."""
    sid = "RE" + "9" * 32
    media = tmp_path / "x.wav"
    media.write_bytes(os.urandom(17 * MIB))
    state_dir = tmp_path / "state"
    args = upload_args(media, s3_account, state_dir, recording_sid=sid, extra=["--part-size", "5"])
    assert run(args, env=aws_env(s3_account)).returncode == 0
    media.write_bytes(os.urandom(18 * MIB))
    proc = run(args, env=aws_env(s3_account))
    assert proc.returncode == 0, proc.stderr
    stored = (
        s3_server.admin_client()
        .get_object(Bucket=s3_account.bucket, Key=f"calls/{ACCOUNT_SID}/{sid}.wav")["Body"]
        .read()
    )
    assert stored == media.read_bytes()


def test_the_state_of_an_upload_named_by_key_is_wiped_after_success(
    s3_server: S3Server, s3_account: S3Account, tmp_path: Path
) -> None:
    """Without a recording SID the state file is named after bucket and key; it goes too."""
    media = tmp_path / "x.wav"
    media.write_bytes(os.urandom(17 * MIB))
    state_dir = tmp_path / "state"
    args = [
        "upload",
        str(media),
        "--bucket-url",
        endpoint_bucket_url(s3_account),
        "--endpoint-url",
        s3_account.endpoint_url,
        "--region",
        s3_account.region,
        "--key",
        "by-hand/x.wav",
        "--state-dir",
        str(state_dir),
        "--part-size",
        "5",
    ]
    proc = run(args, env=aws_env(s3_account))
    assert proc.returncode == 0, proc.stderr
    assert state_dir.is_dir() and not list(state_dir.glob("*.json")), "no state left behind"
