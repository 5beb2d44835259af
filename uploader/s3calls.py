"""S3 calls both sides make on multipart uploads: list the open ones, abort, test.

The uploader aborts what a resumed or deleted recording left open; the operator opens and
aborts a test upload to validate a setting's bucket. Only the seed policy's permissions
are used (PutObject, ListBucketMultipartUploads, AbortMultipartUpload).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from voicevault.uploader.errors import classify

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def open_upload_ids(client: S3Client, bucket: str, key: str) -> set[str]:
    """Upload ids of the open multipart uploads of exactly `key` (ListMultipartUploads)."""
    found: set[str] = set()
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": key}
    while True:
        try:
            page = client.list_multipart_uploads(**kwargs)
        except Exception as exc:
            raise classify(exc, "ListMultipartUploads") from None
        found.update(u["UploadId"] for u in page.get("Uploads", []) if u["Key"] == key)
        if not page.get("IsTruncated"):
            return found
        kwargs["KeyMarker"] = page.get("NextKeyMarker", "")
        kwargs["UploadIdMarker"] = page.get("NextUploadIdMarker", "")


def abort_upload(client: S3Client, bucket: str, key: str, upload_id: str) -> None:
    """AbortMultipartUpload; an upload that is already gone counts as aborted."""
    try:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except Exception as exc:
        error = classify(exc, "AbortMultipartUpload")
        if error.s3_code != "NoSuchUpload":
            raise error from None


def abort_open_uploads(client: S3Client, bucket: str, key: str) -> int:
    """Abort every open multipart upload of `key`; returns how many there were."""
    ids = open_upload_ids(client, bucket, key)
    for upload_id in ids:
        abort_upload(client, bucket, key, upload_id)
    return len(ids)


def open_and_abort(client: S3Client, bucket: str, key: str) -> None:
    """Open a multipart upload of `key` and abort it: the bucket accepts uploads from
    these keys (PutObject and AbortMultipartUpload allowed), and nothing is left behind.
    Raises UploadError."""
    try:
        created = client.create_multipart_upload(Bucket=bucket, Key=key)
    except Exception as exc:
        raise classify(exc, "CreateMultipartUpload") from None
    abort_upload(client, bucket, key, str(created["UploadId"]))
