"""A boto3 S3 client set up for uploads with the seed policy's narrow credentials."""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

from voicevault.uploader.bucketurl import BucketLocation

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@dataclass(frozen=True)
class AwsKeys:
    """An access key. `repr` never shows the secret parts."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:
        return f"AwsKeys(access_key_id='…{self.access_key_id[-4:]}', secret_access_key=<hidden>)"

    __str__ = __repr__


@dataclass(frozen=True)
class ClientSettings:
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    # botocore's own quick retries for throttling, 5xx and dropped connections; longer
    # outages are the operator's business (retry window)
    max_attempts: int = 3
    max_pool_connections: int = 16


def make_client(
    location: BucketLocation, keys: AwsKeys, settings: ClientSettings | None = None
) -> S3Client:
    """An S3 client for `location` (AWS or the endpoint override)."""
    settings = settings or ClientSettings()
    s3_options: Any = {
        # S3-compatible endpoints are addressed path-style; AWS picks what fits the bucket
        "addressing_style": "path" if location.endpoint_url else "auto",
        # every request carries its own SHA-256 checksum header, so hashing the body a
        # second time for the signature would only cost CPU
        "payload_signing_enabled": False,
    }
    config = Config(
        region_name=location.region,
        signature_version="s3v4",
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        retries={"mode": "standard", "max_attempts": settings.max_attempts},
        max_pool_connections=settings.max_pool_connections,
        s3=s3_options,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        tcp_keepalive=True,
    )
    with _SESSION_LOCK:  # a boto3 session is not thread-safe
        client: S3Client = _shared_session().client(
            "s3",
            endpoint_url=location.endpoint_url,
            config=config,
            aws_access_key_id=keys.access_key_id,
            aws_secret_access_key=keys.secret_access_key,
            aws_session_token=keys.session_token,
        )
    return client


class AnsweredRegion:
    """The region an S3 client signed its last successful request for.

    botocore's region redirector follows a wrong-region answer that names the bucket's
    region and signs the retry for it; this reads the region it settled on, so the
    operator can remember it for the setting instead of being redirected on every request.
    """

    def __init__(self, client: S3Client) -> None:
        self.region: str | None = None
        client.meta.events.register("after-call.s3", self._answered)

    def _answered(self, http_response: Any, context: dict[str, Any], **_: Any) -> None:
        if getattr(http_response, "status_code", 500) < 300:
            region = (context.get("signing") or {}).get("region")
            self.region = str(region) if region else self.region


_SESSION_LOCK = threading.Lock()


@functools.cache
def _shared_session() -> boto3.session.Session:
    """One session for every client, holding no credentials (each client gets its own).

    A new session parses botocore's S3 model again: about 75 ms and 12 MiB of garbage a
    client. The operator makes a client at each setting validation, and those bursts
    raised its RSS high-water mark.
    """
    return boto3.session.Session()


def warm_up() -> None:
    """Parse the S3 model into the shared session now. A long-running process (the
    operator) then holds it from the start, instead of taking about 12 MiB at its first
    validation, and that first client costs milliseconds."""
    with _SESSION_LOCK:
        _shared_session().client(
            "s3",
            region_name="us-east-1",
            aws_access_key_id="warm-up",  # never used: the client sends no request
            aws_secret_access_key="warm-up",  # noqa: S106 - a placeholder, not a secret
        )
