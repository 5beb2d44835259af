"""Bucket URL parsing: every accepted form, every rejection, and round-trip properties."""

from __future__ import annotations

import contextlib
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voicevault.uploader.bucketurl import (
    DEFAULT_REGION,
    BucketLocation,
    BucketUrlError,
    parse_bucket_url,
)

# (url, bucket, region, prefix, style, base_url)
AWS_FORMS = [
    pytest.param(
        "https://bucket-name.s3.us-west-2.amazonaws.com/key-name",
        "bucket-name",
        "us-west-2",
        "key-name/",
        "virtual",
        "https://bucket-name.s3.us-west-2.amazonaws.com/",
        id="virtual-with-region",
    ),
    pytest.param(
        "https://bucket-name.s3.amazonaws.com/folder/for/storage/",
        "bucket-name",
        DEFAULT_REGION,
        "folder/for/storage/",
        "virtual",
        "https://bucket-name.s3.amazonaws.com/",
        id="virtual-no-region",
    ),
    pytest.param(
        "https://bucket-name.s3.eu-central-1.amazonaws.com",
        "bucket-name",
        "eu-central-1",
        "",
        "virtual",
        "https://bucket-name.s3.eu-central-1.amazonaws.com/",
        id="virtual-no-path",
    ),
    pytest.param(
        "https://bucket-name.s3.amazonaws.com/",
        "bucket-name",
        DEFAULT_REGION,
        "",
        "virtual",
        "https://bucket-name.s3.amazonaws.com/",
        id="virtual-root-path",
    ),
    pytest.param(
        "https://my.dotted.bucket.s3.ap-southeast-2.amazonaws.com/a",
        "my.dotted.bucket",
        "ap-southeast-2",
        "a/",
        "virtual",
        "https://my.dotted.bucket.s3.ap-southeast-2.amazonaws.com/",
        id="virtual-dotted-bucket",
    ),
    pytest.param(
        "https://my.s3.bucket.s3.amazonaws.com/a",
        "my.s3.bucket",
        DEFAULT_REGION,
        "a/",
        "virtual",
        "https://my.s3.bucket.s3.amazonaws.com/",
        id="virtual-bucket-containing-s3-label",
    ),
    pytest.param(
        "https://bucket-name.s3-us-west-1.amazonaws.com/x/",
        "bucket-name",
        "us-west-1",
        "x/",
        "virtual",
        "https://bucket-name.s3-us-west-1.amazonaws.com/",
        id="virtual-legacy-dash-region",
    ),
    pytest.param(
        "https://bucket-name.s3.cn-north-1.amazonaws.com.cn/rec",
        "bucket-name",
        "cn-north-1",
        "rec/",
        "virtual",
        "https://bucket-name.s3.cn-north-1.amazonaws.com.cn/",
        id="virtual-china",
    ),
    pytest.param(
        "https://s3.us-west-2.amazonaws.com/bucket-name/key-name",
        "bucket-name",
        "us-west-2",
        "key-name/",
        "path",
        "https://s3.us-west-2.amazonaws.com/bucket-name/",
        id="path-with-region",
    ),
    pytest.param(
        "https://s3.amazonaws.com/my_bucket_name/folder/for/storage/",
        "my_bucket_name",
        DEFAULT_REGION,
        "folder/for/storage/",
        "path",
        "https://s3.amazonaws.com/my_bucket_name/",
        id="path-no-region-legacy-underscore",
    ),
    pytest.param(
        "https://s3.amazonaws.com/bucket-name",
        "bucket-name",
        DEFAULT_REGION,
        "",
        "path",
        "https://s3.amazonaws.com/bucket-name/",
        id="path-no-key",
    ),
    pytest.param(
        "https://s3.amazonaws.com/bucket-name/",
        "bucket-name",
        DEFAULT_REGION,
        "",
        "path",
        "https://s3.amazonaws.com/bucket-name/",
        id="path-bucket-trailing-slash",
    ),
    pytest.param(
        "https://s3-eu-west-1.amazonaws.com/bucket-name/a/b",
        "bucket-name",
        "eu-west-1",
        "a/b/",
        "path",
        "https://s3-eu-west-1.amazonaws.com/bucket-name/",
        id="path-legacy-dash-region",
    ),
    pytest.param(
        "https://s3.cn-northwest-1.amazonaws.com.cn/bucket-name/",
        "bucket-name",
        "cn-northwest-1",
        "",
        "path",
        "https://s3.cn-northwest-1.amazonaws.com.cn/bucket-name/",
        id="path-china",
    ),
    pytest.param(
        "https://s3.us-gov-west-1.amazonaws.com/bucket-name/x",
        "bucket-name",
        "us-gov-west-1",
        "x/",
        "path",
        "https://s3.us-gov-west-1.amazonaws.com/bucket-name/",
        id="path-govcloud",
    ),
    pytest.param(
        "HTTPS://Bucket-Name.S3.US-WEST-2.AMAZONAWS.COM/Key",
        "bucket-name",
        "us-west-2",
        "Key/",
        "virtual",
        "https://bucket-name.s3.us-west-2.amazonaws.com/",
        id="host-and-scheme-case-insensitive-key-case-kept",
    ),
    pytest.param(
        "https://bucket-name.s3.amazonaws.com/a//",
        "bucket-name",
        DEFAULT_REGION,
        "a/",
        "virtual",
        "https://bucket-name.s3.amazonaws.com/",
        id="trailing-slashes-normalized",
    ),
    pytest.param(
        "https://bucket-name.s3.amazonaws.com/calls%20%C3%A9t%C3%A9/2024",
        "bucket-name",
        DEFAULT_REGION,
        "calls \u00e9t\u00e9/2024/",
        "virtual",
        "https://bucket-name.s3.amazonaws.com/",
        id="percent-decoded-once",
    ),
    pytest.param(
        "https://bucket-name.s3.amazonaws.com/a%2525b",
        "bucket-name",
        DEFAULT_REGION,
        "a%25b/",
        "virtual",
        "https://bucket-name.s3.amazonaws.com/",
        id="percent-decoded-only-once",
    ),
]


@pytest.mark.parametrize(("url", "bucket", "region", "prefix", "style", "base_url"), AWS_FORMS)
def test_aws_forms(
    url: str, *, bucket: str, region: str, prefix: str, style: str, base_url: str
) -> None:
    loc = parse_bucket_url(url)
    assert (loc.bucket, loc.region, loc.prefix, loc.style) == (bucket, region, prefix, style)
    assert loc.base_url == base_url
    assert loc.endpoint_url is None


def test_region_override_fills_a_missing_region() -> None:
    loc = parse_bucket_url("https://bucket-name.s3.amazonaws.com/", region="eu-west-3")
    assert loc.region == "eu-west-3"


def test_region_override_may_repeat_the_url_region() -> None:
    loc = parse_bucket_url("https://s3.eu-west-3.amazonaws.com/b-1", region="eu-west-3")
    assert loc.region == "eu-west-3"


def test_aws_url_with_endpoint_sends_requests_there_but_keeps_the_aws_url() -> None:
    loc = parse_bucket_url(
        "https://bucket-name.s3.us-east-2.amazonaws.com/rec/",
        endpoint_url="https://bucket.vpce-0abc.s3.us-east-2.vpce.amazonaws.com",
    )
    assert loc.endpoint_url == "https://bucket.vpce-0abc.s3.us-east-2.vpce.amazonaws.com"
    assert loc.object_url("rec/x.wav") == (
        "https://bucket-name.s3.us-east-2.amazonaws.com/rec/x.wav"
    )
    assert loc.region == "us-east-2"


# (url, endpoint, bucket, prefix, style, base_url, endpoint_url)
ENDPOINT_FORMS = [
    pytest.param(
        "http://minio.local:9000/recordings/calls/",
        "http://minio.local:9000",
        "recordings",
        "calls/",
        "path",
        "http://minio.local:9000/recordings/",
        "http://minio.local:9000",
        id="minio-path",
    ),
    pytest.param(
        "http://recordings.minio.local:9000/calls",
        "http://minio.local:9000/",
        "recordings",
        "calls/",
        "virtual",
        "http://recordings.minio.local:9000/",
        "http://minio.local:9000",
        id="minio-virtual",
    ),
    pytest.param(
        "https://store.example.com/legacy_bucket",
        "https://STORE.example.com:443",
        "legacy_bucket",
        "",
        "path",
        "https://store.example.com/legacy_bucket/",
        "https://store.example.com:443",
        id="default-port-equals-explicit-port",
    ),
    pytest.param(
        "http://127.0.0.1:5000/bkt/a/b",
        "http://127.0.0.1:5000",
        "bkt",
        "a/b/",
        "path",
        "http://127.0.0.1:5000/bkt/",
        "http://127.0.0.1:5000",
        id="loopback-path",
    ),
]


@pytest.mark.parametrize(
    ("url", "endpoint", "bucket", "prefix", "style", "base_url", "endpoint_url"),
    ENDPOINT_FORMS,
)
def test_endpoint_forms(
    url: str,
    *,
    endpoint: str,
    bucket: str,
    prefix: str,
    style: str,
    base_url: str,
    endpoint_url: str,
) -> None:
    loc = parse_bucket_url(url, endpoint_url=endpoint)
    assert (loc.bucket, loc.prefix, loc.style) == (bucket, prefix, style)
    assert (loc.base_url, loc.endpoint_url) == (base_url, endpoint_url)
    assert loc.region == DEFAULT_REGION


def test_endpoint_region_comes_from_the_override() -> None:
    loc = parse_bucket_url(
        "http://minio:9000/bkt", endpoint_url="http://minio:9000", region="eu-north-1"
    )
    assert loc.region == "eu-north-1"


@pytest.mark.parametrize("region", ["dc1", "minio", "eu-onprem-1", "a", "x" * 64])
def test_endpoint_region_need_not_look_like_aws(region: str) -> None:
    loc = parse_bucket_url(
        "http://minio:9000/bkt/voice/", endpoint_url="http://minio:9000", region=region
    )
    assert (loc.region, loc.bucket, loc.prefix) == (region, "bkt", "voice/")


def test_aws_hosts_still_want_an_aws_region() -> None:
    with pytest.raises(BucketUrlError, match=r"not an AWS region.*endpoint override"):
        parse_bucket_url("https://bkt.s3.amazonaws.com/", region="dc1")


ERRORS = [
    pytest.param("", {}, "is empty", id="empty"),
    pytest.param("http://bucket-name.s3.amazonaws.com/", {}, "scheme must be https", id="http"),
    pytest.param("ftp://s3.amazonaws.com/bkt", {}, "scheme must be https", id="ftp"),
    pytest.param("bucket-name.s3.amazonaws.com/x", {}, "scheme must be https", id="no-scheme"),
    pytest.param(
        "https://AKIA:secret@bucket-name.s3.amazonaws.com/",
        {},
        "user name or password",
        id="userinfo",
    ),
    pytest.param("https://bucket-name.s3.amazonaws.com/a?b=1", {}, "query", id="query"),
    pytest.param("https://bucket-name.s3.amazonaws.com/a?", {}, "query", id="empty-query"),
    pytest.param("https://bucket-name.s3.amazonaws.com/a#f", {}, "fragment", id="fragment"),
    pytest.param("https://bucket-name.s3.amazonaws.com/a//b", {}, "empty segment", id="a//b"),
    pytest.param("https://bucket-name.s3.amazonaws.com//a", {}, "empty segment", id="//a"),
    pytest.param("https://bucket-name.s3.amazonaws.com/a/./b", {}, "'.' or '..'", id="dot"),
    pytest.param("https://bucket-name.s3.amazonaws.com/a/../b", {}, "'.' or '..'", id="dotdot"),
    pytest.param("https://bucket-name.s3.amazonaws.com/%2E%2E/b", {}, "'..'", id="enc-dotdot"),
    pytest.param("https://bucket-name.s3.amazonaws.com/a%zz", {}, "percent-escape", id="bad%"),
    pytest.param("https://bucket-name.s3.amazonaws.com/%ff", {}, "UTF-8", id="bad-utf8"),
    pytest.param("https://bucket-name.s3.amazonaws.com/a%0Ab", {}, "control", id="enc-newline"),
    pytest.param("https://bucket-name.s3.amazonaws.com/a b", {}, "whitespace", id="space"),
    pytest.param("https://bucket-name.s3.amazonaws.com/a\nb", {}, "whitespace", id="newline"),
    pytest.param("https://bucket-name.s3.amazonaws.com:443/", {}, "port", id="aws-port"),
    pytest.param("https://[::1/bkt", {}, "not a valid URL", id="broken-ipv6"),
    pytest.param("https://ab.s3.amazonaws.com/", {}, "3 to 63", id="bucket-too-short"),
    pytest.param(f"https://{'a' * 64}.s3.amazonaws.com/", {}, "3 to 63", id="bucket-too-long"),
    pytest.param("https://s3.amazonaws.com/Bucket", {}, "lowercase", id="bucket-uppercase"),
    pytest.param("https://-bucket.s3.amazonaws.com/", {}, "start and end", id="bucket-hyphen"),
    pytest.param("https://s3.amazonaws.com/bucket-", {}, "start and end", id="bucket-ends-dash"),
    pytest.param("https://my_bucket.s3.amazonaws.com/", {}, "lowercase", id="virtual-underscore"),
    pytest.param("https://a..b.s3.amazonaws.com/", {}, "'..'", id="bucket-double-dot"),
    pytest.param("https://s3.amazonaws.com/192.168.5.4/", {}, "IP address", id="bucket-ip"),
    pytest.param("https://s3.amazonaws.com/", {}, "first segment", id="path-no-bucket"),
    pytest.param("https://s3.amazonaws.com", {}, "first segment", id="path-no-path"),
    pytest.param("https://ec2.us-east-1.amazonaws.com/b", {}, "not an S3", id="aws-not-s3"),
    pytest.param("https://b-1.s3.dualstack.amazonaws.com/", {}, "not an S3", id="dualstack"),
    pytest.param("https://storage.googleapis.com/bkt", {}, "endpoint override", id="non-aws"),
    pytest.param("https://bkt.s3.amazonaws.com.cn/", {}, "must name the region", id="cn-no-reg"),
    pytest.param("https://bkt.s3.us-east-1.amazonaws.com.cn/", {}, "partition", id="cn-wrong"),
    pytest.param("https://bkt.s3.cn-north-1.amazonaws.com/", {}, "partition", id="com-cn-region"),
    pytest.param(
        "https://bkt.s3.us-west-2.amazonaws.com/",
        {"region": "eu-west-1"},
        "disagrees",
        id="region-disagrees",
    ),
    pytest.param(
        "https://bkt.s3.amazonaws.com/",
        {"region": "Moon-1"},
        "not an AWS region",
        id="bad-region-override",
    ),
    pytest.param(
        "http://minio:9000/bkt",
        {"endpoint_url": "http://minio:9000", "region": "DC_1"},
        "lowercase letters, digits and hyphens",
        id="bad-endpoint-region",
    ),
    pytest.param(
        "http://minio:9000/bkt",
        {"endpoint_url": "http://minio:9000", "region": "x" * 65},
        "1 to 64",
        id="endpoint-region-too-long",
    ),
    pytest.param(
        "http://minio:9000/bkt",
        {"endpoint_url": "http://other:9000"},
        "neither the endpoint host",
        id="other-host",
    ),
    pytest.param(
        "http://minio:9001/bkt",
        {"endpoint_url": "http://minio:9000"},
        "same scheme and port",
        id="other-port",
    ),
    pytest.param(
        "https://minio:9000/bkt",
        {"endpoint_url": "http://minio:9000"},
        "same scheme and port",
        id="other-scheme",
    ),
    pytest.param(
        "http://minio/bkt",
        {"endpoint_url": "ftp://minio"},
        "endpoint URL scheme",
        id="endpoint-ftp",
    ),
    pytest.param(
        "http://minio/bkt",
        {"endpoint_url": "http://minio/s3"},
        "must not have a path",
        id="endpoint-path",
    ),
    pytest.param(
        "http://minio/bkt",
        {"endpoint_url": "http://minio/?x=1"},
        "query",
        id="endpoint-query",
    ),
    pytest.param(
        "http://minio/bkt",
        {"endpoint_url": "http://u:p@minio"},
        "user name or password",
        id="endpoint-userinfo",
    ),
    pytest.param("http://minio/bkt", {"endpoint_url": ""}, "endpoint URL is empty", id="ep-empty"),
    pytest.param(
        "http://my_bkt.minio/", {"endpoint_url": "http://minio"}, "lowercase", id="ep-virtual-us"
    ),
    pytest.param("http://minio/", {"endpoint_url": "http://minio"}, "first segment", id="ep-nob"),
]


@pytest.mark.parametrize(("url", "kwargs", "message"), ERRORS)
def test_errors(url: str, kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(BucketUrlError, match=message) as info:
        parse_bucket_url(url, **kwargs)
    assert "\n" not in str(info.value)


def test_userinfo_error_does_not_echo_the_secret() -> None:
    with pytest.raises(BucketUrlError) as info:
        parse_bucket_url("https://AKIAXYZ:s3cr3t@bucket-name.s3.amazonaws.com/")
    assert "s3cr3t" not in str(info.value)
    assert "AKIAXYZ" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "kwargs", "quoted"),
    [
        pytest.param("https://My_Bucket.s3.amazonaws.com/", {}, "'My_Bucket'", id="virtual"),
        pytest.param("https://s3.amazonaws.com/My_Bucket/", {}, "'My_Bucket'", id="path"),
        pytest.param("https://Ab.S3.US-EAST-1.AMAZONAWS.COM/", {}, "'Ab'", id="too-short"),
        pytest.param(
            "http://My_Bkt.MinIO:9000/", {"endpoint_url": "http://minio:9000"}, "'My_Bkt'", id="ep"
        ),
        pytest.param("https://Storage.GoogleAPIs.com/b", {}, "'Storage.GoogleAPIs.com'", id="host"),
    ],
)
def test_errors_quote_the_value_as_the_user_wrote_it(
    url: str, kwargs: dict[str, str], quoted: str
) -> None:
    with pytest.raises(BucketUrlError) as info:
        parse_bucket_url(url, **kwargs)
    assert quoted in str(info.value)


def test_bucket_url_error_is_a_value_error() -> None:
    assert issubclass(BucketUrlError, ValueError)


def test_object_key_and_url_virtual() -> None:
    loc = parse_bucket_url("https://bucket-name.s3.us-west-2.amazonaws.com/folder/for/storage/")
    key = loc.object_key("AC" + "0" * 32, "RE" + "1" * 32, ".wav")
    assert key == f"folder/for/storage/AC{'0' * 32}/RE{'1' * 32}.wav"
    assert loc.object_url(key) == (
        f"https://bucket-name.s3.us-west-2.amazonaws.com/folder/for/storage/"
        f"AC{'0' * 32}/RE{'1' * 32}.wav"
    )


def test_object_key_and_url_path_root_prefix() -> None:
    loc = parse_bucket_url("https://s3.amazonaws.com/my_bucket_name/")
    key = loc.object_key("ACx", "REy", ".mp3")
    assert key == "ACx/REy.mp3"
    assert loc.object_url(key) == "https://s3.amazonaws.com/my_bucket_name/ACx/REy.mp3"


def test_object_url_percent_encodes_each_segment_and_keeps_slashes() -> None:
    loc = parse_bucket_url("https://bucket-name.s3.amazonaws.com/calls%20%C3%A9t%C3%A9/")
    assert loc.object_url("calls \u00e9t\u00e9/a+b?c#d/x%y.wav") == (
        "https://bucket-name.s3.amazonaws.com/calls%20%C3%A9t%C3%A9/a%2Bb%3Fc%23d/x%25y.wav"
    )


def test_object_url_on_an_endpoint() -> None:
    loc = parse_bucket_url("http://minio:9000/bkt/p/", endpoint_url="http://minio:9000")
    assert loc.object_url(loc.object_key("AC1", "RE2", ".wav")) == (
        "http://minio:9000/bkt/p/AC1/RE2.wav"
    )


@pytest.mark.parametrize(
    ("account", "recording", "extension"),
    [("", "RE1", ".wav"), ("AC/1", "RE1", ".wav"), ("AC1", "", ".wav"), ("AC1", "RE1", "/x")],
)
def test_object_key_rejects_values_that_would_change_the_layout(
    account: str, recording: str, extension: str
) -> None:
    loc = parse_bucket_url("https://bucket-name.s3.amazonaws.com/")
    with pytest.raises(ValueError, match="must"):
        loc.object_key(account, recording, extension)


def test_location_is_frozen() -> None:
    loc = parse_bucket_url("https://bucket-name.s3.amazonaws.com/")
    with pytest.raises(AttributeError):
        loc.bucket = "other"  # type: ignore[misc]


# --- properties ---------------------------------------------------------------------


def _valid_bucket(allow_underscore: bool) -> st.SearchStrategy[str]:
    inner = "[a-z0-9._-]" if allow_underscore else "[a-z0-9.-]"
    return (
        st.from_regex(rf"[a-z0-9]{inner}{{1,61}}[a-z0-9]", fullmatch=True)
        .filter(lambda b: ".." not in b)
        .filter(lambda b: not all(part.isdigit() for part in b.split(".")))
    )


REGIONS = st.from_regex(r"[a-z]{2}(-[a-z]{1,10}){1,2}-[0-9]{1,2}", fullmatch=True).filter(
    lambda r: not r.startswith("cn-")
)
SEGMENTS = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="/"),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in (".", ".."))
PREFIXES = st.lists(SEGMENTS, max_size=4)


def _path(segments: list[str]) -> str:
    return "".join("/" + quote(segment, safe="") for segment in segments) + "/"


def _expected_prefix(segments: list[str]) -> str:
    return "".join(segment + "/" for segment in segments)


@given(_valid_bucket(False), st.one_of(st.none(), REGIONS), PREFIXES, st.sampled_from(".-"))
def test_virtual_form_round_trips(
    bucket: str, region: str | None, segments: list[str], sep: str
) -> None:
    host = f"{bucket}.s3{sep}{region}" if region else f"{bucket}.s3"
    loc = parse_bucket_url(f"https://{host}.amazonaws.com{_path(segments)}")
    assert loc == BucketLocation(
        bucket=bucket,
        region=region or DEFAULT_REGION,
        prefix=_expected_prefix(segments),
        style="virtual",
        endpoint_url=None,
        base_url=f"https://{host}.amazonaws.com/",
    )
    key = loc.object_key("AC1", "RE2", ".wav")
    assert parse_bucket_url(loc.object_url(key)).prefix == key + "/"


@given(_valid_bucket(True), st.one_of(st.none(), REGIONS), PREFIXES, st.sampled_from(".-"))
def test_path_form_round_trips(
    bucket: str, region: str | None, segments: list[str], sep: str
) -> None:
    host = f"s3{sep}{region}" if region else "s3"
    loc = parse_bucket_url(f"https://{host}.amazonaws.com/{bucket}{_path(segments)}")
    assert (loc.bucket, loc.region, loc.prefix, loc.style) == (
        bucket,
        region or DEFAULT_REGION,
        _expected_prefix(segments),
        "path",
    )
    key = loc.object_key("AC1", "RE2", ".wav")
    assert parse_bucket_url(loc.object_url(key)).prefix == key + "/"


@given(_valid_bucket(False), PREFIXES, st.booleans())
def test_endpoint_forms_round_trip(bucket: str, segments: list[str], virtual: bool) -> None:
    endpoint = "http://minio.test:9000"
    url = (
        f"http://{bucket}.minio.test:9000{_path(segments)}"
        if virtual
        else f"{endpoint}/{bucket}{_path(segments)}"
    )
    loc = parse_bucket_url(url, endpoint_url=endpoint)
    assert (loc.bucket, loc.prefix, loc.style, loc.endpoint_url) == (
        bucket,
        _expected_prefix(segments),
        "virtual" if virtual else "path",
        endpoint,
    )


@given(st.text(max_size=80), st.one_of(st.none(), st.text(max_size=40)))
def test_arbitrary_text_raises_only_bucket_url_error(url: str, endpoint: str | None) -> None:
    try:
        parse_bucket_url(url, endpoint_url=endpoint)
    except BucketUrlError as error:
        message = str(error)
    else:
        return
    assert "\n" not in message


@given(
    st.builds(
        "".join,
        st.lists(
            st.sampled_from(
                [
                    "https://",
                    "http://",
                    "s3",
                    ".",
                    "-",
                    "amazonaws.com",
                    ".cn",
                    "/",
                    "%",
                    "%2F",
                    "%2e",
                    "b",
                    "bucket",
                    "us-east-1",
                    "@",
                    ":",
                    "[",
                    "]",
                    "?",
                    "#",
                    "_",
                    "9",
                ]
            ),
            max_size=14,
        ),
    )
)
def test_url_like_text_raises_only_bucket_url_error(url: str) -> None:
    with contextlib.suppress(BucketUrlError):
        parse_bucket_url(url)
