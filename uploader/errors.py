"""What went wrong with an upload: fatal or transient, with Twilio-style error codes.

The uploader only classifies; the retry policy (2-hour window, then Cached) belongs to
the operator. Messages are built here from error codes and fixed text, never from
request data, so no credential or key can leak through an exception message.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Mapping
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from urllib3.exceptions import HTTPError as Urllib3HTTPError

from voicevault.contract import ErrorClass, ErrorCode
from voicevault.uploader.bucketurl import is_aws_region
from voicevault.uploader.envelope import InvalidPublicKey


class UploadError(Exception):
    """An upload failure that has been classified. `str()` is safe to show anywhere."""

    def __init__(
        self, error_class: ErrorClass, code: ErrorCode, message: str, s3_code: str = ""
    ) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.code = code
        self.message = message
        self.s3_code = s3_code  # the storage service's own error code, if it gave one

    @property
    def fatal(self) -> bool:
        return self.error_class is ErrorClass.FATAL

    def __repr__(self) -> str:
        return f"UploadError({self.error_class.value}, {int(self.code)}, {self.message!r})"


def failed_summary(code: int, *, media_deleted: bool | None) -> str:
    """The phase message of a Failed recording, true about its local media.

    `None`: the writer does not know (the operator recording an uploader's result).
    """
    if media_deleted is None:
        return f"Fatal error {code}; no retries"
    if media_deleted:
        return f"Fatal error {code}; local media deleted, no retries"
    return f"Fatal error {code}; nothing was deleted from the node, no retries"


def fatal(code: ErrorCode, message: str) -> UploadError:
    return UploadError(ErrorClass.FATAL, code, message)


def transient(message: str, code: ErrorCode = ErrorCode.UPLOAD_FAILED) -> UploadError:
    return UploadError(ErrorClass.TRANSIENT, code, message)


# S3 error codes → (class, code). Anything unknown with a 5xx status is transient; an
# unknown 4xx is fatal, because retrying an invalid request for two hours helps nobody.
_S3_CODES: dict[str, tuple[ErrorClass, ErrorCode]] = {
    "AccessDenied": (ErrorClass.FATAL, ErrorCode.ACCESS_DENIED),
    "InvalidAccessKeyId": (ErrorClass.FATAL, ErrorCode.ACCESS_DENIED),
    "SignatureDoesNotMatch": (ErrorClass.FATAL, ErrorCode.ACCESS_DENIED),
    "AllAccessDisabled": (ErrorClass.FATAL, ErrorCode.ACCESS_DENIED),
    "AccountProblem": (ErrorClass.FATAL, ErrorCode.ACCESS_DENIED),
    "InvalidToken": (ErrorClass.FATAL, ErrorCode.ACCESS_DENIED),
    "InvalidSecurity": (ErrorClass.FATAL, ErrorCode.ACCESS_DENIED),
    "NoSuchBucket": (ErrorClass.FATAL, ErrorCode.UPLOAD_FAILED),
    "InvalidBucketName": (ErrorClass.FATAL, ErrorCode.UPLOAD_FAILED),
    "EntityTooLarge": (ErrorClass.FATAL, ErrorCode.UPLOAD_FAILED),
    # transient: the service, the network or the clock, not the configuration
    # a region hint the S3 client could not follow: the media is kept, the setting's
    # validation finds the region (or goes Ready=False with RegionUnknown)
    "PermanentRedirect": (ErrorClass.TRANSIENT, ErrorCode.UPLOAD_FAILED),
    "AuthorizationHeaderMalformed": (ErrorClass.TRANSIENT, ErrorCode.UPLOAD_FAILED),
    "SlowDown": (ErrorClass.TRANSIENT, ErrorCode.UPLOAD_FAILED),
    "Throttling": (ErrorClass.TRANSIENT, ErrorCode.UPLOAD_FAILED),
    "ThrottlingException": (ErrorClass.TRANSIENT, ErrorCode.UPLOAD_FAILED),
    "RequestLimitExceeded": (ErrorClass.TRANSIENT, ErrorCode.UPLOAD_FAILED),
    "TooManyRequests": (ErrorClass.TRANSIENT, ErrorCode.UPLOAD_FAILED),
    "RequestTimeout": (ErrorClass.TRANSIENT, ErrorCode.UPLOAD_FAILED),
    "RequestTimeTooSkewed": (ErrorClass.TRANSIENT, ErrorCode.UPLOAD_FAILED),
    "ExpiredToken": (ErrorClass.TRANSIENT, ErrorCode.UPLOAD_FAILED),
    "TokenRefreshRequired": (ErrorClass.TRANSIENT, ErrorCode.UPLOAD_FAILED),
    "InternalError": (ErrorClass.TRANSIENT, ErrorCode.UPLOAD_FAILED),
    "ServiceUnavailable": (ErrorClass.TRANSIENT, ErrorCode.UPLOAD_FAILED),
    "NoSuchUpload": (ErrorClass.TRANSIENT, ErrorCode.UPLOAD_FAILED),
    "InvalidPart": (ErrorClass.TRANSIENT, ErrorCode.UPLOAD_FAILED),
    "BadDigest": (ErrorClass.TRANSIENT, ErrorCode.UPLOAD_FAILED),
    "XAmzContentChecksumMismatch": (ErrorClass.TRANSIENT, ErrorCode.UPLOAD_FAILED),
    "InvalidDigest": (ErrorClass.TRANSIENT, ErrorCode.UPLOAD_FAILED),
    "IncompleteBody": (ErrorClass.TRANSIENT, ErrorCode.UPLOAD_FAILED),
}

# Codes by which S3 says the request went to (or was signed for) another region than the
# bucket's; botocore's region redirector follows them when they name the region.
REGION_HINT_CODES = frozenset({"PermanentRedirect", "AuthorizationHeaderMalformed"})

# Codes whose meaning is "this one request was corrupted in flight": re-send it at once.
CHECKSUM_MISMATCH_CODES = frozenset({"BadDigest", "XAmzContentChecksumMismatch", "InvalidDigest"})

_EXPLANATIONS: dict[str, str] = {
    "AccessDenied": "the bucket denied access to the upload user (check its IAM policy)",
    "InvalidAccessKeyId": "the access key id is not known to the storage service",
    "SignatureDoesNotMatch": "the secret access key does not match the access key id",
    "NoSuchBucket": "the bucket does not exist",
    "SlowDown": "the storage service asked to slow down",
    "NoSuchUpload": "the multipart upload no longer exists",
}


def s3_error_code(exc: ClientError) -> str:
    """The S3 error code of a ClientError ('' if the response had none)."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def region_hint(response: Mapping[str, Any]) -> str | None:
    """The bucket's region as a wrong-region answer names it, if it does.

    `response` is botocore's parsed response (`ClientError.response`): the
    `x-amz-bucket-region` header first, then the error XML's `<Region>`. Anything that is
    not a region code counts as no hint.
    """
    metadata = response.get("ResponseMetadata") or {}
    headers = metadata.get("HTTPHeaders") or {}
    error = response.get("Error") or {}
    for candidate in (headers.get("x-amz-bucket-region"), error.get("Region")):
        if isinstance(candidate, str) and is_aws_region(candidate.strip()):
            return candidate.strip()
    return None


def classify(exc: BaseException, operation: str = "upload") -> UploadError:
    """Map any exception raised while uploading to a classified UploadError."""
    if isinstance(exc, UploadError):
        return exc
    if isinstance(exc, ClientError):
        return _classify_client_error(exc, operation)
    if isinstance(exc, InvalidPublicKey):
        # a ValueError: it would otherwise count as an unexpected, transient error
        return fatal(ErrorCode.INVALID_PUBLIC_KEY, f"{operation}: invalid public key")
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return fatal(ErrorCode.ACCESS_DENIED, f"{operation}: no complete AWS credentials given")
    if isinstance(exc, ReadTimeoutError | ConnectTimeoutError):
        return transient(f"{operation}: timed out talking to the storage service")
    if isinstance(exc, EndpointConnectionError | ConnectionClosedError):
        return transient(f"{operation}: connection to the storage service failed")
    if isinstance(exc, Urllib3HTTPError | ConnectionError | socket.timeout | TimeoutError):
        return transient(f"{operation}: network error ({type(exc).__name__})")
    if isinstance(exc, BotoCoreError):
        return transient(f"{operation}: {type(exc).__name__}")
    if isinstance(exc, OSError):
        return _classify_os_error(exc, operation)
    return transient(f"{operation}: unexpected {type(exc).__name__}")


def _classify_client_error(exc: ClientError, operation: str) -> UploadError:
    code = s3_error_code(exc)
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    known = _S3_CODES.get(code)
    if known is None:
        known = (
            (ErrorClass.TRANSIENT, ErrorCode.UPLOAD_FAILED)
            if status >= 500 or status in (0, 408, 429)
            else (ErrorClass.FATAL, ErrorCode.ACCESS_DENIED)
            if status == 403
            else (ErrorClass.FATAL, ErrorCode.UPLOAD_FAILED)
        )
    explanation = _EXPLANATIONS.get(code, "")
    if code in REGION_HINT_CODES:
        hinted = region_hint(exc.response)
        explanation = (
            f"the bucket is in region {hinted!r}, not in the one the request was signed for"
            if hinted
            else "the bucket is in another region and did not say which"
        )
    shown = code or f"HTTP {status}"
    detail = f"{shown} ({status})" if status else shown
    message = f"{operation}: {detail}" + (f": {explanation}" if explanation else "")
    return UploadError(known[0], known[1], message, s3_code=code)


def _classify_os_error(exc: OSError, operation: str) -> UploadError:
    if exc.errno in (errno.ECONNRESET, errno.ECONNREFUSED, errno.EPIPE, errno.ETIMEDOUT):
        return transient(f"{operation}: network error ({errno.errorcode[exc.errno]})")
    name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    if exc.errno in (errno.EACCES, errno.EPERM) and exc.filename:
        # which file, and as whom: "EACCES" alone does not tell anyone what to fix
        path = os.fsdecode(exc.filename)
        return transient(
            f"{operation}: local I/O error ({name}) on {path} as UID {os.getuid()}: "
            "the recordings directory must be writable by uploader.runAsUser"
        )
    return transient(f"{operation}: local I/O error ({name})")
