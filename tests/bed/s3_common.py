"""What every test S3 server (moto, MinIO) offers: narrow accounts and an admin client.

Customers give voicevault credentials holding exactly the seed policy (write-only under
a prefix), so tests run the uploader with those and assert with admin credentials.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

SEED_POLICY_PATH = Path(__file__).with_name("seed_policy.json")
_BUCKET_PLACEHOLDER = "my_bucket_name"
_PREFIX_PLACEHOLDER = "folder/for/storage/"


def normalize_prefix(prefix: str) -> str:
    """``""`` and ``"/"`` mean the whole bucket; anything else ends with exactly one ``/``."""
    stripped = prefix.strip("/")
    return f"{stripped}/" if stripped else ""


def render_seed_policy(bucket: str, prefix: str) -> str:
    """The customer-facing policy document with bucket and prefix filled in, as JSON text."""
    text = SEED_POLICY_PATH.read_text()
    text = text.replace(_BUCKET_PLACEHOLDER, bucket)
    return text.replace(_PREFIX_PLACEHOLDER, normalize_prefix(prefix))


def seed_policy(bucket: str, prefix: str) -> dict[str, Any]:
    """:func:`render_seed_policy` parsed, for APIs that take a dict."""
    policy: dict[str, Any] = json.loads(render_seed_policy(bucket, prefix))
    return policy


def s3_client(
    endpoint_url: str, region: str, access_key_id: str, secret_access_key: str
) -> S3Client:
    """boto3 S3 client with path-style addressing (no wildcard DNS on loopback)."""
    client: S3Client = boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    )
    return client


def http_answers(url: str) -> bool:
    """True once anything answers HTTP at ``url`` (any status code counts)."""
    try:
        with urllib.request.urlopen(url, timeout=2):  # noqa: S310
            return True
    except urllib.error.HTTPError:
        return True
    except urllib.error.URLError:
        return False


@dataclass(frozen=True)
class S3Account:
    """A bucket plus credentials holding only the seed policy for ``prefix``."""

    endpoint_url: str
    region: str
    bucket: str
    prefix: str
    access_key_id: str
    secret_access_key: str
    server_name: str

    def client(self) -> S3Client:
        """S3 client with the narrow (seed-policy) credentials."""
        return s3_client(self.endpoint_url, self.region, self.access_key_id, self.secret_access_key)

    def key(self, name: str) -> str:
        """Object key ``name`` under this account's prefix."""
        return f"{self.prefix}{name}"


class S3Server(Protocol):
    """Common interface of :class:`~tests.bed.s3_moto.MotoS3` and ``MinioS3``."""

    @property
    def endpoint_url(self) -> str: ...

    @property
    def name(self) -> str: ...

    def add_bucket(self, bucket: str, prefix: str, region: str = ...) -> S3Account: ...

    def admin_client(self) -> S3Client: ...

    def stop(self) -> None: ...
