"""Fatal versus transient failures, seen as a user of `voicevault upload` sees them.

Fatal (exit 3): the bucket refuses the credentials, or the public key is unusable (caught
before any byte is sent). Transient (exit 4): throttling, 5xx, dropped connections,
timeouts; running the command again resumes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.bed.faultproxy import Delay, FaultProxy, ResetConnection, Respond, Rule
from tests.bed.fixtures import unique_name
from tests.bed.s3_common import S3Account, S3Server
from tests.support.cli import aws_env, run, upload_args

pytestmark = pytest.mark.s3
MIB = 1 << 20


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    with FaultProxy(s3_server.endpoint_url) as p:
        yield p


@pytest.fixture
def media(tmp_path: Path) -> Path:
    path = tmp_path / "call.wav"
    path.write_bytes(os.urandom(2 * MIB))
    return path


def _assert_clean_failure(proc: object, code: int, error: str, secret: str) -> None:
    returncode, stderr, stdout = proc.returncode, proc.stderr, proc.stdout  # type: ignore[attr-defined]
    assert returncode == code, stderr
    assert error in stderr
    assert "Traceback" not in stderr
    assert secret not in stderr + stdout


def test_wrong_secret_is_fatal_access_denied(
    s3_account: S3Account, media: Path, tmp_path: Path
) -> None:
    proc = run(
        upload_args(media, s3_account, tmp_path / "s", recording_sid="RE" + "1" * 32),
        env=aws_env(s3_account, secret="x" * 40),
    )
    _assert_clean_failure(proc, 3, "16112", "x" * 40)
    assert media.exists(), "by hand, the user's file is never deleted on failure"


def test_credentials_of_another_bucket_are_fatal(
    s3_server: S3Server, s3_account: S3Account, media: Path, tmp_path: Path
) -> None:
    other = s3_server.add_bucket(unique_name("other"), "calls/")
    stranger = S3Account(
        **(
            vars(s3_account)
            | {"access_key_id": other.access_key_id, "secret_access_key": other.secret_access_key}
        )
    )
    proc = run(
        upload_args(media, stranger, tmp_path / "s", recording_sid="RE" + "2" * 32),
        env=aws_env(stranger),
    )
    _assert_clean_failure(proc, 3, "16112", other.secret_access_key)


def test_write_outside_the_prefix_is_fatal(
    s3_account: S3Account, media: Path, tmp_path: Path
) -> None:
    outside = S3Account(**(vars(s3_account) | {"prefix": "elsewhere/"}))
    proc = run(
        upload_args(media, outside, tmp_path / "s", recording_sid="RE" + "3" * 32),
        env=aws_env(s3_account),
    )
    _assert_clean_failure(proc, 3, "16112", s3_account.secret_access_key)


def _pem(key: object) -> bytes:
    return key.public_key().public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize(
    "pem",
    [
        b"not a key",
        _pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
        _pem(ec.generate_private_key(ec.SECP256R1())),
    ],
    ids=["garbage", "rsa-1024", "ec"],
)
def test_bad_public_key_is_fatal_before_any_request(
    s3_account: S3Account, proxy: FaultProxy, media: Path, tmp_path: Path, pem: bytes
) -> None:
    key_file = tmp_path / "public.pem"
    key_file.write_bytes(pem)
    proc = run(
        upload_args(
            media,
            s3_account,
            tmp_path / "s",
            recording_sid="RE" + "4" * 32,
            endpoint=proxy.url,
            public_key=key_file,
        ),
        env=aws_env(s3_account),
    )
    _assert_clean_failure(proc, 3, "16104", s3_account.secret_access_key)
    assert sum(proxy.stats().requests.values()) == 0, "nothing was sent"


@pytest.mark.parametrize(
    "action",
    [
        Respond(503, "SlowDown", "Please reduce your request rate."),
        Respond(500, "InternalError", "We encountered an internal error."),
        ResetConnection(after_request_bytes=64 * 1024),
    ],
    ids=["slowdown", "500", "reset-mid-body"],
)
def test_service_trouble_is_transient_and_resumable(
    s3_server: S3Server, s3_account: S3Account, proxy: FaultProxy, tmp_path: Path, action: object
) -> None:
    media = tmp_path / "call.wav"
    media.write_bytes(os.urandom(17 * MIB))
    args = upload_args(
        media,
        s3_account,
        tmp_path / "s",
        recording_sid="RE" + "5" * 32,
        endpoint=proxy.url,
        extra=["--part-size", "5"],
    )
    proxy.add_rule(Rule(action=action, method="PUT", query_contains="partNumber=2"))  # type: ignore[arg-type]
    proc = run(args, env=aws_env(s3_account))
    _assert_clean_failure(proc, 4, "16111", s3_account.secret_access_key)
    assert "run the command again" in proc.stderr
    assert media.exists()
    proxy.clear_rules()
    again = run(args, env=aws_env(s3_account))
    assert again.returncode == 0, again.stderr


def test_slow_server_past_the_timeout_is_transient(
    s3_account: S3Account, proxy: FaultProxy, media: Path, tmp_path: Path
) -> None:
    proxy.add_rule(Rule(action=Delay(3.0), method="PUT"))
    proc = run(
        upload_args(
            media,
            s3_account,
            tmp_path / "s",
            recording_sid="RE" + "6" * 32,
            endpoint=proxy.url,
            extra=["--timeout", "0.5"],
        ),
        env=aws_env(s3_account),
    )
    _assert_clean_failure(proc, 4, "timed out", s3_account.secret_access_key)


def test_server_gone_is_transient(
    s3_account: S3Account, proxy: FaultProxy, media: Path, tmp_path: Path
) -> None:
    proxy.pause()
    proc = run(
        upload_args(
            media, s3_account, tmp_path / "s", recording_sid="RE" + "7" * 32, endpoint=proxy.url
        ),
        env=aws_env(s3_account),
    )
    _assert_clean_failure(proc, 4, "16111", s3_account.secret_access_key)
    proxy.resume()
    again = run(
        upload_args(
            media, s3_account, tmp_path / "s", recording_sid="RE" + "7" * 32, endpoint=proxy.url
        ),
        env=aws_env(s3_account),
    )
    assert again.returncode == 0, again.stderr
