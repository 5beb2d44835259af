"""AWS host names served on loopback: the fault proxy in AWS mode, and a guard that no
name is ever resolved (so no packet can leave for the real AWS).

The client reaches ``bucket.s3.amazonaws.com`` through ``HTTPS_PROXY`` (the proxy's
``CONNECT`` tunnel), trusts the test CA through ``AWS_CA_BUNDLE``, and never looks the
name up: both are the AWS SDK's own settings, so a subprocess honours them too.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.bed.certs import create_ca, issue_serving_cert


def aws_s3_names(regions: Sequence[str]) -> list[str]:
    """The S3 host names (virtual-host and path style) of the global endpoint and `regions`."""
    names = ["s3.amazonaws.com", "*.s3.amazonaws.com"]
    for region in regions:
        names += [f"s3.{region}.amazonaws.com", f"*.s3.{region}.amazonaws.com"]
    return names


@dataclass(frozen=True)
class AwsTls:
    """The CA file clients trust and the proxy's server-side TLS context."""

    ca_bundle: Path
    context: ssl.SSLContext


def aws_tls(directory: Path, regions: Sequence[str]) -> AwsTls:
    """A throwaway CA and a certificate for the S3 names of `regions`."""
    ca = create_ca(directory / "ca", common_name="voicevault-test-aws-ca")
    serving = issue_serving_cert(
        ca,
        directory,
        "aws-s3",
        common_name="s3.amazonaws.com",
        ips=(),
        dns_names=aws_s3_names(regions),
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(serving.cert, serving.key)
    return AwsTls(ca.cert, context)


def aws_client_env(proxy_url: str, ca_bundle: Path) -> dict[str, str]:
    """Environment that sends an AWS SDK's HTTPS through the proxy, trusting the test CA;
    loopback stays direct (the apiserver, moto's own port)."""
    return {
        "HTTPS_PROXY": proxy_url,
        "https_proxy": proxy_url,
        "AWS_CA_BUNDLE": str(ca_bundle),
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


@dataclass
class LookupLog:
    """Names something tried to resolve that are not loopback (each refused)."""

    refused: list[str] = field(default_factory=list)


@contextlib.contextmanager
def loopback_lookups_only() -> Iterator[LookupLog]:
    """Refuse (and record) any name lookup but loopback, in this process."""
    log = LookupLog()
    real = socket.getaddrinfo

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if not _is_loopback(name):
            log.refused.append(name)
            raise socket.gaierror(socket.EAI_NONAME, f"test bed: no lookup of {name!r}")
        return real(host, *args, **kwargs)

    socket.getaddrinfo = guarded
    try:
        yield log
    finally:
        socket.getaddrinfo = real


def _is_loopback(name: str) -> bool:
    if name in ("localhost", "None"):  # None: a wildcard bind, not a lookup
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
