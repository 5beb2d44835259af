"""MinIO on loopback: an S3 that enforces the seed policy and verifies checksums.

Unlike moto, MinIO rejects a wrong Content-MD5 or x-amz-checksum-*, so it proves the
uploader's integrity checks end to end. Users and policies go through the admin API.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from minio import MinioAdmin
from minio.credentials.providers import StaticProvider

from tests.bed import binaries
from tests.bed.processes import ManagedProcess, free_port, wait_until
from tests.bed.s3_common import S3Account, http_answers, normalize_prefix, s3_client, seed_policy

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


class MinioS3:
    """``minio server`` with a fresh data dir; root credentials act as the admin."""

    name = "minio"

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        region: str = "us-east-1",
        ready_timeout: float = 60.0,
        host: str = "127.0.0.1",
    ) -> None:
        binary = binaries.minio()  # may build for minutes on a cold cache
        self._owns_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="voicevault-minio-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.region = region
        self.host = host
        self.port = free_port(host)
        self.endpoint_url = f"http://{host}:{self.port}"
        self._root_user = "voicevault-root"
        self._root_password = secrets.token_hex(16)
        self._proc = ManagedProcess(self._argv(binary), self.workdir / "minio.log", env=self._env())
        try:
            wait_until(
                lambda: http_answers(f"{self.endpoint_url}/minio/health/ready"),
                timeout=ready_timeout,
                what="minio /minio/health/ready",
                process=self._proc,
            )
        except BaseException:
            self.stop()
            raise

    def _argv(self, binary: Path) -> list[str]:
        return [
            str(binary),
            "server",
            str(self.workdir / "data"),
            "--address",
            f"{self.host}:{self.port}",
            "--console-address",
            f"127.0.0.1:{free_port()}",
            "--certs-dir",  # keeps MinIO from creating ~/.minio
            str(self.workdir / "certs"),
        ]

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MINIO_")}
        env.update(
            {
                "MINIO_ROOT_USER": self._root_user,
                "MINIO_ROOT_PASSWORD": self._root_password,
                "MINIO_BROWSER": "off",
                "MINIO_SITE_REGION": self.region,
                "MINIO_UPDATE": "off",
            }
        )
        return env

    def _minio_admin(self) -> MinioAdmin:
        return MinioAdmin(
            endpoint=f"{self.host}:{self.port}",
            credentials=StaticProvider(self._root_user, self._root_password),
            region=self.region,
            secure=False,
        )

    def admin_client(self) -> S3Client:
        """S3 client with the root credentials (allowed everything)."""
        return s3_client(self.endpoint_url, self.region, self._root_user, self._root_password)

    def add_bucket(self, bucket: str, prefix: str, region: str | None = None) -> S3Account:
        """Create ``bucket`` and a user holding exactly the seed policy for ``prefix``."""
        if region is not None and region != self.region:
            raise ValueError(f"MinIO serves one region ({self.region}); start another MinioS3")
        prefix = normalize_prefix(prefix)
        self.admin_client().create_bucket(Bucket=bucket)
        user = f"uploader-{uuid.uuid4().hex[:12]}"
        secret = secrets.token_hex(20)
        admin = self._minio_admin()
        admin.policy_add(f"{user}-seed", policy=seed_policy(bucket, prefix))
        admin.user_add(user, secret)
        admin.attach_policy([f"{user}-seed"], user=user)
        return S3Account(
            endpoint_url=self.endpoint_url,
            region=self.region,
            bucket=bucket,
            prefix=prefix,
            access_key_id=user,
            secret_access_key=secret,
            server_name=self.name,
        )

    def stop(self) -> None:
        """Kill the server's process group; remove the workdir if we created it."""
        self._proc.stop()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> MinioS3:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
