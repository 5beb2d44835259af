"""Classification of upload failures: S3 error codes, HTTP statuses and network errors map
to fatal or transient with the right Twilio error code, in messages that leak nothing."""

from __future__ import annotations

import errno

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from voicevault.contract import ErrorClass, ErrorCode
from voicevault.uploader.envelope import InvalidPublicKey
from voicevault.uploader.errors import (
    CHECKSUM_MISMATCH_CODES,
    UploadError,
    classify,
    fatal,
    transient,
)

FATAL, TRANSIENT = ErrorClass.FATAL, ErrorClass.TRANSIENT
ENDPOINT = "https://s3.secret-host.example:9000/bucket?X-Amz-Signature=deadbeef"


def _client_error(code: str, status: int, operation: str = "PutObject") -> ClientError:
    response: dict[str, object] = {
        "Error": {"Code": code, "Message": "whatever the server says"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, operation)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("code", "status", "error_class", "twilio_code"),
    [
        ("AccessDenied", 403, FATAL, 16112),
        ("InvalidAccessKeyId", 403, FATAL, 16112),
        ("SignatureDoesNotMatch", 403, FATAL, 16112),
        ("NoSuchBucket", 404, FATAL, 16111),
        ("SlowDown", 503, TRANSIENT, 16111),
        ("Throttling", 400, TRANSIENT, 16111),
        ("RequestTimeout", 400, TRANSIENT, 16111),
        ("InternalError", 500, TRANSIENT, 16111),
        ("ExpiredToken", 400, TRANSIENT, 16111),
        ("BadDigest", 400, TRANSIENT, 16111),
        ("EntityTooLarge", 400, FATAL, 16111),
        # no (or an unknown) S3 code: the HTTP status decides
        ("", 500, TRANSIENT, 16111),
        ("502", 502, TRANSIENT, 16111),
        ("ServiceUnavailable", 503, TRANSIENT, 16111),
        ("", 504, TRANSIENT, 16111),
        ("", 429, TRANSIENT, 16111),
        ("SomethingNew", 403, FATAL, 16112),
        ("SomethingNew", 400, FATAL, 16111),
    ],
)
def test_client_errors_are_classified_by_code_then_status(
    code: str, status: int, error_class: ErrorClass, twilio_code: int
) -> None:
    """Each S3 answer gets its class and code; the message names the S3 code and status."""
    error = classify(_client_error(code, status), "PutObject")
    assert (error.error_class, int(error.code)) == (error_class, twilio_code)
    assert error.fatal is (error_class is FATAL)
    assert error.s3_code == code
    assert error.message.startswith("PutObject: ")
    assert str(status) in error.message
    assert "whatever the server says" not in error.message, "server text is never echoed"


def test_known_codes_are_explained() -> None:
    """The common fatal codes say what to fix, not just the code."""
    assert "does not exist" in classify(_client_error("NoSuchBucket", 404)).message
    assert "IAM policy" in classify(_client_error("AccessDenied", 403)).message


def test_checksum_mismatch_codes_are_transient() -> None:
    """A part corrupted in transit is worth sending again, never a reason to give up."""
    for code in CHECKSUM_MISMATCH_CODES:
        assert classify(_client_error(code, 400)).error_class is TRANSIENT


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (EndpointConnectionError(endpoint_url=ENDPOINT), "connection"),
        (ConnectionClosedError(endpoint_url=ENDPOINT), "connection"),
        (ReadTimeoutError(endpoint_url=ENDPOINT), "timed out"),
        (ConnectTimeoutError(endpoint_url=ENDPOINT), "timed out"),
        (ConnectionResetError(errno.ECONNRESET, "reset"), "network error"),
        (TimeoutError(), "network error"),
        (OSError(errno.EPIPE, "broken pipe"), "network error"),
        (OSError(errno.EIO, "I/O error"), "local I/O error"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_network_trouble_is_transient_and_hides_the_endpoint(exc: Exception, words: str) -> None:
    """Connections that fail, close or time out are retried; the URL is not in the message."""
    error = classify(exc, "UploadPart")
    assert (error.error_class, error.code) == (TRANSIENT, ErrorCode.UPLOAD_FAILED)
    assert words in error.message
    assert "secret-host" not in error.message and "deadbeef" not in error.message


def test_missing_credentials_are_fatal_access_denied() -> None:
    error = classify(NoCredentialsError())
    assert (error.error_class, int(error.code)) == (FATAL, 16112)


def test_invalid_public_key_is_fatal_16104() -> None:
    """An unusable public key never becomes usable by waiting: fatal, without echoing it."""
    error = classify(InvalidPublicKey("RSA key is too small: 1024 bits < 2048"), "encrypt")
    assert (error.error_class, int(error.code)) == (FATAL, 16104)
    assert "public key" in error.message


@pytest.mark.parametrize(
    "error",
    [
        fatal(ErrorCode.INVALID_PUBLIC_KEY, "invalid public key: not PEM"),
        fatal(ErrorCode.ENCRYPTION_FAILED, "could not wrap the content key"),
        transient("media file changed while uploading"),
    ],
    ids=["16104", "16105", "transient"],
)
def test_classified_errors_pass_through_unchanged(error: UploadError) -> None:
    """Errors raised already classified (16104, 16105, ...) keep their class and code."""
    assert classify(error) is error


def test_encryption_failure_is_fatal_16105() -> None:
    error = fatal(ErrorCode.ENCRYPTION_FAILED, "could not wrap the content key")
    assert error.fatal and int(error.code) == 16105
    assert repr(error) == "UploadError(Fatal, 16105, 'could not wrap the content key')"


def test_unexpected_exceptions_are_transient() -> None:
    """A bug or surprise is retried (within the operator's window), never deletes media."""
    error = classify(RuntimeError("boom"), "upload")
    assert error.error_class is TRANSIENT and "RuntimeError" in error.message
