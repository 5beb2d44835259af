"""Parse the customer's S3 bucket URL into bucket, region and key prefix.

The seed accepts virtual-host (`https://BUCKET.s3.REGION.amazonaws.com/path`) and path
style (`https://s3.REGION.amazonaws.com/BUCKET/path`) URLs, region and path optional.
Everything is validated up front so a bad setting is reported when it is applied, not
when the first recording fails to upload. Parsing is pure: no DNS, no network.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import SplitResult, quote, unquote, urlsplit

__all__ = [
    "DEFAULT_REGION",
    "BucketLocation",
    "BucketUrlError",
    "is_aws_region",
    "parse_bucket_url",
    "region_mismatch",
]

DEFAULT_REGION = "us-east-1"

Style = Literal["virtual", "path"]

_AWS_SUFFIXES = (".amazonaws.com.cn", ".amazonaws.com")
_REGION = r"[a-z]{2}(?:-[a-z]+)+-[0-9]+"
_REGION_RE = re.compile(_REGION)
# S3-compatible stores name their regions freely ("dc1", "eu-onprem-1", "minio").
_ENDPOINT_REGION_RE = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,62}[a-z0-9])?")
# What stays of an AWS host once the suffix is gone, matched as written (any case). The
# bucket is greedy so that a bucket name containing ".s3." still resolves to the
# right-most S3 label.
_AWS_PATH_HOST_RE = re.compile(rf"s3(?:[.-](?P<region>{_REGION}))?", re.IGNORECASE)
_AWS_VIRTUAL_HOST_RE = re.compile(
    rf"(?P<bucket>.+)\.s3(?:[.-](?P<region>{_REGION}))?", re.IGNORECASE
)
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]*[a-z0-9]")
_LEGACY_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9._-]*[a-z0-9]")
_IPV4_LIKE_RE = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+")
_BAD_PERCENT_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class BucketUrlError(ValueError):
    """The bucket URL (or its endpoint or region override) cannot be used."""


@dataclass(frozen=True, slots=True)
class BucketLocation:
    """Where recordings go: the parsed bucket URL plus the resolved endpoint."""

    bucket: str
    region: str
    prefix: str
    style: Style
    endpoint_url: str | None
    base_url: str
    # the region the customer named (in the URL or the override); None: `region` is the
    # default, and the bucket's own region may differ (the operator finds it). Where the
    # bucket is does not depend on it, so it takes no part in equality.
    named_region: str | None = field(default=None, compare=False)

    def object_key(self, account_sid: str, recording_sid: str, extension: str) -> str:
        """Key of one recording: grouping by account keeps a shared bucket tidy."""
        for name, value in (("account SID", account_sid), ("recording SID", recording_sid)):
            if not value or "/" in value:
                raise ValueError(f"{name} must be non-empty and contain no '/'")
        if "/" in extension:
            raise ValueError("extension must not contain '/'")
        return f"{self.prefix}{account_sid}/{recording_sid}{extension}"

    def object_url(self, key: str) -> str:
        """The object's full URL in the style the customer wrote, for `mediaUrl`."""
        return self.base_url + "/".join(quote(segment, safe="") for segment in key.split("/"))


@dataclass(frozen=True, slots=True)
class _Endpoint:
    url: str
    scheme: str
    host: str
    port: int


def parse_bucket_url(
    url: str, *, endpoint_url: str | None = None, region: str | None = None
) -> BucketLocation:
    """Parse and validate a bucket URL; raise BucketUrlError with a one-line reason."""
    endpoint = _parse_endpoint(endpoint_url) if endpoint_url is not None else None
    if region is not None:
        _check_region(region, on_endpoint=endpoint is not None)
    parts = _split(url, "bucket URL")
    allowed = ("http", "https") if endpoint else ("https",)
    if parts.scheme not in allowed:
        raise BucketUrlError(
            f"bucket URL scheme must be {' or '.join(allowed)}, got {parts.scheme!r}"
        )
    host = _written_host(parts)
    if not host:
        raise BucketUrlError("bucket URL has no host")
    segments = _path_segments(parts.path)
    suffix = _aws_suffix(host)
    if suffix is not None:
        return _parse_aws(parts, host, suffix, segments, endpoint=endpoint, region=region)
    if endpoint is None:
        raise BucketUrlError(
            f"host {host!r} is not an AWS S3 host; set an endpoint override for "
            "S3-compatible stores"
        )
    return _parse_on_endpoint(parts, host, segments, endpoint=endpoint, region=region)


def _written_host(parts: SplitResult) -> str:
    """The host as the user wrote it: `hostname` lowercases, and messages must not."""
    host = parts.netloc.rpartition("@")[2]
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.partition(":")[0]


def _split(url: str, what: str) -> SplitResult:
    """Split a URL, turning every malformation into one BucketUrlError."""
    if not url:
        raise BucketUrlError(f"{what} is empty")
    if any(ch.isspace() or unicodedata.category(ch) == "Cc" for ch in url):
        raise BucketUrlError(f"{what} must not contain whitespace or control characters")
    if "?" in url:
        raise BucketUrlError(f"{what} must not have a query string")
    if "#" in url:
        raise BucketUrlError(f"{what} must not have a fragment")
    try:
        parts = urlsplit(url)
        _ = parts.port  # urlsplit only checks the port when it is read
    except ValueError:
        raise BucketUrlError(f"{what} is not a valid URL") from None
    if "@" in parts.netloc:
        raise BucketUrlError(f"{what} must not contain a user name or password")
    return parts._replace(scheme=parts.scheme.lower())


def _parse_endpoint(url: str) -> _Endpoint:
    parts = _split(url, "endpoint URL")
    if parts.scheme not in _DEFAULT_PORTS:
        raise BucketUrlError(f"endpoint URL scheme must be http or https, got {parts.scheme!r}")
    if not parts.hostname:
        raise BucketUrlError("endpoint URL has no host")
    if parts.path not in ("", "/"):
        raise BucketUrlError("endpoint URL must not have a path; expected scheme://host[:port]")
    port = parts.port or _DEFAULT_PORTS[parts.scheme]
    netloc = parts.netloc.lower()
    return _Endpoint(f"{parts.scheme}://{netloc}", parts.scheme, parts.hostname, port)


def _path_segments(path: str) -> list[str]:
    """Decode the path once and split it; `/`, `` and trailing slashes mean no prefix."""
    if _BAD_PERCENT_RE.search(path):
        raise BucketUrlError("bucket URL path has a malformed percent-escape; expected %XX")
    try:
        decoded = unquote(path, errors="strict")
    except UnicodeDecodeError:
        raise BucketUrlError("bucket URL path does not decode as UTF-8") from None
    if any(unicodedata.category(ch) == "Cc" for ch in decoded):
        raise BucketUrlError("bucket URL path must not contain control characters")
    trimmed = decoded.removeprefix("/").rstrip("/")
    if not trimmed:
        return []
    segments = trimmed.split("/")
    for segment in segments:
        if segment == "":
            raise BucketUrlError("bucket URL path has an empty segment ('//')")
        if segment in (".", ".."):
            raise BucketUrlError("bucket URL path must not contain '.' or '..' segments")
    return segments


def _aws_suffix(host: str) -> str | None:
    return next((suffix for suffix in _AWS_SUFFIXES if _ends_with(host, suffix)), None)


def _ends_with(host: str, suffix: str) -> bool:
    """Case-insensitive, without lowercasing the rest of the host (so lengths stay put)."""
    return len(host) >= len(suffix) and host[len(host) - len(suffix) :].lower() == suffix


def _parse_aws(
    parts: SplitResult,
    host: str,
    suffix: str,
    segments: list[str],
    *,
    endpoint: _Endpoint | None,
    region: str | None,
) -> BucketLocation:
    if parts.port is not None:
        raise BucketUrlError("AWS bucket URL must not name a port")
    label = host[: len(host) - len(suffix)]
    scheme = parts.scheme
    if match := _AWS_PATH_HOST_RE.fullmatch(label):
        style: Style = "path"
        bucket, segments = _path_bucket(segments)
        base_url = f"{scheme}://{label.lower()}{suffix}/{bucket}/"
    elif match := _AWS_VIRTUAL_HOST_RE.fullmatch(label):
        style = "virtual"
        bucket = match["bucket"]
        base_url = f"{scheme}://{label.lower()}{suffix}/"
    else:
        raise BucketUrlError(
            f"host {host!r} is not an S3 bucket URL; expected BUCKET.s3.REGION{suffix} "
            f"or s3.REGION{suffix}/BUCKET"
        )
    bucket = _check_bucket(bucket, style)
    in_url = match["region"].lower() if match["region"] else None
    resolved = _resolve_region(in_url, region, suffix)
    return BucketLocation(
        bucket=bucket,
        region=resolved,
        prefix=_prefix(segments),
        style=style,
        endpoint_url=endpoint.url if endpoint else None,
        base_url=base_url,
        named_region=in_url or region,
    )


def _parse_on_endpoint(
    parts: SplitResult,
    host: str,
    segments: list[str],
    *,
    endpoint: _Endpoint,
    region: str | None,
) -> BucketLocation:
    """A non-AWS bucket URL must live on the endpoint, path or virtual style."""
    port = parts.port or _DEFAULT_PORTS[parts.scheme]
    if parts.scheme != endpoint.scheme or port != endpoint.port:
        raise BucketUrlError(
            f"bucket URL must use the same scheme and port as the endpoint URL {endpoint.url!r}"
        )
    origin = f"{parts.scheme}://{parts.netloc.lower()}"
    if host.lower() == endpoint.host:
        style: Style = "path"
        bucket, segments = _path_bucket(segments)
        base_url = f"{origin}/{bucket}/"
    elif _ends_with(host, "." + endpoint.host):
        style = "virtual"
        bucket = host[: len(host) - len(endpoint.host) - 1]
        base_url = f"{origin}/"
    else:
        raise BucketUrlError(
            f"bucket URL host {host!r} is neither the endpoint host {endpoint.host!r} "
            "nor BUCKET.<endpoint host>"
        )
    bucket = _check_bucket(bucket, style)
    return BucketLocation(
        bucket=bucket,
        region=region or DEFAULT_REGION,
        prefix=_prefix(segments),
        style=style,
        endpoint_url=endpoint.url,
        base_url=base_url,
        named_region=region,
    )


def region_mismatch(location: BucketLocation, answered: str) -> str | None:
    """Why a setting naming one region cannot use a bucket that answers from another."""
    named = location.named_region
    if named is None or named == answered:
        return None
    return (
        f"bucket {location.bucket!r} is in region {answered!r}, but the setting names region "
        f"{named!r} (in bucketUrl or spec.externalStorage.region): name {answered!r} or no "
        "region at all"
    )


def is_aws_region(text: str) -> bool:
    """Whether `text` is shaped like an AWS region code (`eu-west-1`, `us-gov-west-1`)."""
    return _REGION_RE.fullmatch(text) is not None


def _path_bucket(segments: list[str]) -> tuple[str, list[str]]:
    if not segments:
        raise BucketUrlError("path-style bucket URL must name the bucket as its first segment")
    return segments[0], segments[1:]


def _check_bucket(written: str, style: Style) -> str:
    """The bucket name under S3 naming rules; messages quote it as the user wrote it.

    Underscores survive only in legacy path-style buckets. A virtual-host bucket is part
    of a DNS name, so its letters are case-insensitive there and count as lowercase.
    """
    bucket = written.lower() if style == "virtual" else written
    pattern = _LEGACY_BUCKET_RE if style == "path" else _BUCKET_RE
    if not 3 <= len(bucket) <= 63:
        raise BucketUrlError(f"bucket name {written!r} must be 3 to 63 characters long")
    if not pattern.fullmatch(bucket):
        allowed = "lowercase letters, digits, dots, hyphens" + (
            " and underscores" if style == "path" else ""
        )
        raise BucketUrlError(
            f"bucket name {written!r} must use only {allowed} and start and end with a "
            "letter or digit"
        )
    if ".." in bucket:
        raise BucketUrlError(f"bucket name {written!r} must not contain '..'")
    if _IPV4_LIKE_RE.fullmatch(bucket):
        raise BucketUrlError(f"bucket name {written!r} must not be an IP address")
    return bucket


def _check_region(region: str, *, on_endpoint: bool) -> None:
    if on_endpoint:
        if not _ENDPOINT_REGION_RE.fullmatch(region):
            raise BucketUrlError(
                f"region {region!r} must be 1 to 64 lowercase letters, digits and hyphens"
            )
    elif not _REGION_RE.fullmatch(region):
        raise BucketUrlError(
            f"region {region!r} is not an AWS region code like 'us-east-1' "
            "(any name is allowed with an endpoint override)"
        )


def _resolve_region(in_url: str | None, override: str | None, suffix: str) -> str:
    china = suffix == ".amazonaws.com.cn"
    if in_url and override and in_url != override:
        raise BucketUrlError(
            f"bucket URL region {in_url!r} disagrees with the region override {override!r}"
        )
    resolved = in_url or override
    if resolved is None:
        if china:
            raise BucketUrlError("China (.amazonaws.com.cn) bucket URLs must name the region")
        return DEFAULT_REGION
    if china != resolved.startswith("cn-"):
        raise BucketUrlError(
            f"region {resolved!r} does not belong to the {suffix.lstrip('.')} partition"
        )
    return resolved


def _prefix(segments: list[str]) -> str:
    return "".join(f"{segment}/" for segment in segments)
