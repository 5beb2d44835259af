"""The customer's seed policy, as each test S3 server enforces it.

voicevault must work with credentials that can only write (single and multipart) under
a prefix: it may never read, list, delete or write elsewhere. Every S3 test server must
enforce exactly that, or the uploader tests prove nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from botocore.exceptions import ClientError

from tests.bed.s3_common import S3Account, S3Server

pytestmark = pytest.mark.s3

PART_SIZE = 5 * 1024 * 1024  # S3's minimum for every part but the last


def test_put_object_under_prefix(s3_server: S3Server, s3_account: S3Account) -> None:
    key = s3_account.key("call-1.wav")
    s3_account.client().put_object(Bucket=s3_account.bucket, Key=key, Body=b"audio")

    stored = s3_server.admin_client().get_object(Bucket=s3_account.bucket, Key=key)
    assert stored["Body"].read() == b"audio"


def test_multipart_lifecycle_under_prefix(s3_server: S3Server, s3_account: S3Account) -> None:
    s3 = s3_account.client()
    bucket, key = s3_account.bucket, s3_account.key("call-2.wav")

    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    etag = s3.upload_part(
        Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"x" * PART_SIZE
    )["ETag"]

    parts = s3.list_parts(Bucket=bucket, Key=key, UploadId=upload_id)["Parts"]
    assert [(p["PartNumber"], p["ETag"]) for p in parts] == [(1, etag)]
    # MinIO lists an upload only when Prefix is the exact key; that works everywhere.
    uploads = s3.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", [])
    assert upload_id in [u["UploadId"] for u in uploads]

    s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    left = s3_server.admin_client().list_multipart_uploads(Bucket=bucket, Prefix=key)
    assert upload_id not in [u["UploadId"] for u in left.get("Uploads", [])]


DeniedCall = Callable[[S3Account, str], object]

DENIED: dict[str, DeniedCall] = {
    "get": lambda a, key: a.client().get_object(Bucket=a.bucket, Key=key),
    "head": lambda a, key: a.client().head_object(Bucket=a.bucket, Key=key),
    "list": lambda a, key: a.client().list_objects_v2(Bucket=a.bucket, Prefix=a.prefix),
    "delete": lambda a, key: a.client().delete_object(Bucket=a.bucket, Key=key),
    "put-outside-prefix": lambda a, key: a.client().put_object(
        Bucket=a.bucket, Key=f"elsewhere/{key}", Body=b"nope"
    ),
}


@pytest.mark.parametrize("operation", list(DENIED), ids=list(DENIED))
def test_everything_else_is_denied(
    s3_server: S3Server, s3_account: S3Account, operation: str
) -> None:
    admin = s3_server.admin_client()
    key = s3_account.key("existing.wav")
    admin.put_object(Bucket=s3_account.bucket, Key=key, Body=b"secret audio")

    with pytest.raises(ClientError) as denied:
        DENIED[operation](s3_account, key)

    error = denied.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 403
    # HEAD responses have no body, so botocore only knows the status code.
    assert error["Error"]["Code"] in (
        {"403", "AccessDenied"} if operation == "head" else {"AccessDenied"}
    )
    # Nothing changed: the object is still there and nothing was written elsewhere.
    assert admin.head_object(Bucket=s3_account.bucket, Key=key)["ContentLength"] == 12
    listed = admin.list_objects_v2(Bucket=s3_account.bucket).get("Contents", [])
    assert [o["Key"] for o in listed] == [key]
