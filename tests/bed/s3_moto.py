"""moto in server mode with IAM enforcement: a fast S3 that evaluates the seed policy.

moto checks every request against IAM once ``/moto-api/reset-auth`` is posted, so the
admin user must be created before that; it keeps full access for test assertions.
moto does not verify checksums (use :mod:`tests.bed.s3_minio` for that).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import tempfile
import urllib.request
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3

from tests.bed.processes import ManagedProcess, free_port, wait_until
from tests.bed.s3_common import (
    S3Account,
    http_answers,
    normalize_prefix,
    render_seed_policy,
    s3_client,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_ALLOW_ALL = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}
_IAM_REGION = "us-east-1"


class MotoS3:
    """``python -m moto.server`` on a free port of ``host`` (loopback), IAM enforced after setup."""

    name = "moto"

    def __init__(
        self, workdir: Path | None = None, *, ready_timeout: float = 30.0, host: str = "127.0.0.1"
    ) -> None:
        self._owns_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="voicevault-moto-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port(host)
        self.endpoint_url = f"http://{host}:{self.port}"
        argv = [sys.executable, "-m", "moto.server", "-H", host, "-p", str(self.port)]
        self._proc = ManagedProcess(argv, self.workdir / "moto.log")
        try:
            wait_until(
                lambda: http_answers(f"{self.endpoint_url}/moto-api/"),
                timeout=ready_timeout,
                what="moto server",
                process=self._proc,
            )
            self._admin_key, self._admin_secret = self._create_admin()
            self._enforce_iam()
        except BaseException:
            self.stop()
            raise

    def _iam(self, creds: tuple[str, str] = ("setup", "setup")) -> Any:
        """IAM client (typed Any: the IAM stubs are not a test dependency)."""
        return boto3.client(
            "iam",
            endpoint_url=self.endpoint_url,
            region_name=_IAM_REGION,
            aws_access_key_id=creds[0],
            aws_secret_access_key=creds[1],
        )

    def _create_admin(self) -> tuple[str, str]:
        """Admin user with an allow-everything policy, created while auth is still off."""
        iam = self._iam()
        iam.create_user(UserName="voicevault-admin")
        iam.put_user_policy(
            UserName="voicevault-admin",
            PolicyName="allow-everything",
            PolicyDocument=json.dumps(_ALLOW_ALL),
        )
        key = iam.create_access_key(UserName="voicevault-admin")["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    def _enforce_iam(self) -> None:
        # A form content type makes moto answer 500: it must be text/plain.
        request = urllib.request.Request(  # noqa: S310
            f"{self.endpoint_url}/moto-api/reset-auth",
            data=b"0",
            headers={"Content-Type": "text/plain"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            if response.status != 200:
                raise RuntimeError(f"moto reset-auth answered {response.status}")

    @property
    def admin_credentials(self) -> tuple[str, str]:
        """Access key id and secret of the local admin (allowed everything; local only)."""
        return self._admin_key, self._admin_secret

    def admin_client(self) -> S3Client:
        """S3 client with the admin credentials (allowed everything)."""
        return s3_client(self.endpoint_url, _IAM_REGION, self._admin_key, self._admin_secret)

    def add_bucket(self, bucket: str, prefix: str, region: str = "us-east-1") -> S3Account:
        """Create ``bucket`` and an IAM user holding exactly the seed policy for ``prefix``."""
        prefix = normalize_prefix(prefix)
        admin = s3_client(self.endpoint_url, region, self._admin_key, self._admin_secret)
        if region == "us-east-1":
            admin.create_bucket(Bucket=bucket)
        else:
            admin.create_bucket(
                Bucket=bucket,
                CreateBucketConfiguration={"LocationConstraint": region},  # type: ignore[typeddict-item]
            )
        iam = self._iam((self._admin_key, self._admin_secret))
        user = f"uploader-{uuid.uuid4().hex[:12]}"
        iam.create_user(UserName=user)
        arn = iam.create_policy(
            PolicyName=f"{user}-seed", PolicyDocument=render_seed_policy(bucket, prefix)
        )["Policy"]["Arn"]
        iam.attach_user_policy(UserName=user, PolicyArn=arn)
        key = iam.create_access_key(UserName=user)["AccessKey"]
        return S3Account(
            endpoint_url=self.endpoint_url,
            region=region,
            bucket=bucket,
            prefix=prefix,
            access_key_id=key["AccessKeyId"],
            secret_access_key=key["SecretAccessKey"],
            server_name=self.name,
        )

    def revoke(self, account: S3Account) -> None:
        """Delete the account's access key, as a customer revoking voicevault's access."""
        iam = self._iam((self._admin_key, self._admin_secret))
        user = iam.get_access_key_last_used(AccessKeyId=account.access_key_id)["UserName"]
        iam.delete_access_key(UserName=user, AccessKeyId=account.access_key_id)

    def rotate(self, account: S3Account) -> S3Account:
        """A new access key for the account's user, the old one deleted (a key rotation)."""
        iam = self._iam((self._admin_key, self._admin_secret))
        user = iam.get_access_key_last_used(AccessKeyId=account.access_key_id)["UserName"]
        key = iam.create_access_key(UserName=user)["AccessKey"]
        iam.delete_access_key(UserName=user, AccessKeyId=account.access_key_id)
        return dataclasses.replace(
            account, access_key_id=key["AccessKeyId"], secret_access_key=key["SecretAccessKey"]
        )

    def stop(self) -> None:
        """Kill the server's process group; remove the workdir if we created it."""
        self._proc.stop()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> MotoS3:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
