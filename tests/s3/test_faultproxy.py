"""The fault proxy against a real moto server: pass-through is byte-exact, and every fault
surfaces in botocore the way the uploader's tests expect it to."""

from __future__ import annotations

import contextlib
import http.client
import io
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from tests.bed.faultproxy import (
    Blackhole,
    CorruptRequestByte,
    Delay,
    FaultProxy,
    ResetConnection,
    Respond,
    Rule,
    s3_operation,
)
from tests.support.kube import wait_for

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = [pytest.mark.s3, pytest.mark.timeout(60)]

MiB = 1024 * 1024
BUCKET = "faultproxy"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_listening(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """A private moto server (own process group, so teardown kills all of it)."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_listening(port, time.monotonic() + 30)
        url = f"http://127.0.0.1:{port}"
        _client(url).create_bucket(Bucket=BUCKET)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


@pytest.fixture
def proxy(moto_url: str) -> Iterator[FaultProxy]:
    with FaultProxy(moto_url) as running:
        yield running


def _client(endpoint: str, **config: Any) -> S3Client:
    """A client that makes exactly one attempt (``max_attempts`` would count *retries*)."""
    settings: dict[str, Any] = {
        "s3": {"addressing_style": "path"},
        "retries": {"total_max_attempts": 1},
        "connect_timeout": 2,
        "read_timeout": 5,
    }
    settings.update(config)
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(**settings),
    )


def _key() -> str:
    return f"obj-{uuid.uuid4().hex}"


def _get(client: S3Client, key: str) -> bytes:
    return client.get_object(Bucket=BUCKET, Key=key)["Body"].read()


@pytest.mark.parametrize("size", [0, 1, 20 * MiB], ids=["0B", "1B", "20MiB"])
@pytest.mark.parametrize("as_stream", [False, True], ids=["bytes", "stream"])
def test_passthrough_is_byte_exact(proxy: FaultProxy, size: int, as_stream: bool) -> None:
    """A stream body makes botocore send ``Expect: 100-continue``; bytes bodies do not."""
    s3 = _client(proxy.url)
    data = os.urandom(size)
    key = _key()
    s3.put_object(Bucket=BUCKET, Key=key, Body=io.BytesIO(data) if as_stream else data)
    assert _get(s3, key) == data
    stats = proxy.stats()
    assert stats.requests == {("PUT", "PutObject"): 1, ("GET", "GetObject"): 1}
    assert stats.bytes_to_upstream == size
    assert stats.bytes_to_client == size
    assert stats.faults_injected == {}
    assert [(r.operation, r.status) for r in proxy.requests] == [
        ("PutObject", 200),
        ("GetObject", 200),
    ]


def test_multipart_upload_through_proxy(proxy: FaultProxy) -> None:
    s3 = _client(proxy.url)
    key = _key()
    parts = [os.urandom(5 * MiB) for _ in range(3)]
    upload_id = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    etags = [
        s3.upload_part(
            Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=n, Body=io.BytesIO(part)
        )["ETag"]
        for n, part in enumerate(parts, start=1)
    ]
    listed = s3.list_parts(Bucket=BUCKET, Key=key, UploadId=upload_id)["Parts"]
    assert [p["PartNumber"] for p in listed] == [1, 2, 3]
    s3.complete_multipart_upload(
        Bucket=BUCKET,
        Key=key,
        UploadId=upload_id,
        MultipartUpload={
            "Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, start=1)]
        },
    )
    assert _get(s3, key) == b"".join(parts)
    assert proxy.stats().requests == {
        ("POST", "CreateMultipartUpload"): 1,
        ("PUT", "UploadPart"): 3,
        ("GET", "ListParts"): 1,
        ("POST", "CompleteMultipartUpload"): 1,
        ("GET", "GetObject"): 1,
    }


def test_respond_slowdown_twice_then_pass(proxy: FaultProxy) -> None:
    rule = proxy.add_rule(Rule(Respond(), method="PUT", times=2))
    s3 = _client(proxy.url)
    key = _key()
    # A stream body (Expect: 100-continue, answered early), then a bytes body (read and
    # discarded), then the rule is used up.
    for body in (io.BytesIO(b"x" * 1000), b"y" * 1000):
        with pytest.raises(ClientError) as info:
            s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        assert info.value.response["Error"]["Code"] == "SlowDown"
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"z" * 1000)
    assert _get(s3, key) == b"z" * 1000
    assert (rule.matched, rule.applied) == (3, 2)
    assert proxy.stats().faults_injected == {"Respond": 2}
    assert [(r.status, r.fault) for r in proxy.requests] == [
        (503, "Respond"),
        (503, "Respond"),
        (200, None),
        (200, None),
    ]


def test_after_skips_first_matches(proxy: FaultProxy) -> None:
    rule = proxy.add_rule(Rule(Respond(500, "InternalError", "boom"), method="GET", after=1))
    s3 = _client(proxy.url)
    key = _key()
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"a")
    assert _get(s3, key) == b"a"
    with pytest.raises(ClientError) as info:
        _get(s3, key)
    assert info.value.response["Error"]["Code"] == "InternalError"
    assert (rule.matched, rule.applied) == (2, 1)


def test_reset_in_the_middle_of_a_part(proxy: FaultProxy) -> None:
    s3 = _client(proxy.url)
    key = _key()
    upload_id = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    rule = proxy.add_rule(
        Rule(ResetConnection(after_request_bytes=MiB), method="PUT", query_contains="partNumber")
    )
    part = os.urandom(5 * MiB)
    with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
        s3.upload_part(
            Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=1, Body=io.BytesIO(part)
        )
    stats = proxy.stats()
    assert rule.applied == 1
    assert stats.faults_injected == {"ResetConnection": 1}
    assert stats.requests[("PUT", "UploadPart")] == 1
    assert stats.bytes_to_upstream == MiB
    assert proxy.requests[-1].status is None
    assert "Parts" not in s3.list_parts(Bucket=BUCKET, Key=key, UploadId=upload_id)

    proxy.clear_rules()  # the same client recovers on a new connection
    s3.upload_part(Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=1, Body=part)
    s3.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload_id)
    assert proxy.stats().requests[("DELETE", "AbortMultipartUpload")] == 1


def test_reset_after_whole_request_loses_only_the_response(proxy: FaultProxy) -> None:
    s3 = _client(proxy.url)
    key = _key()
    proxy.add_rule(Rule(ResetConnection(after_request_bytes=10**9), method="PUT", times=1))
    with pytest.raises(ConnectionClosedError):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"arrived")
    assert _get(s3, key) == b"arrived"


def test_reset_in_the_middle_of_a_response(proxy: FaultProxy) -> None:
    s3 = _client(proxy.url)
    key = _key()
    s3.put_object(Bucket=BUCKET, Key=key, Body=os.urandom(MiB))
    proxy.add_rule(Rule(ResetConnection(after_response_bytes=1000), method="GET"))
    response = s3.get_object(Bucket=BUCKET, Key=key)
    with pytest.raises(ResponseStreamingError):
        response["Body"].read()
    assert proxy.stats().bytes_to_client == 1000


def test_delay_makes_read_timeout_fire(proxy: FaultProxy) -> None:
    s3 = _client(proxy.url, read_timeout=0.5)
    key = _key()
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"slow")
    proxy.add_rule(Rule(Delay(5.0, "before_response"), method="GET"))
    started = time.monotonic()
    with pytest.raises(ReadTimeoutError):
        _get(s3, key)
    assert time.monotonic() - started < 4.0  # gave up long before the delay ended
    assert proxy.stats().faults_injected == {"Delay": 1}


def test_delay_during_response_stalls_the_body(proxy: FaultProxy) -> None:
    s3 = _client(proxy.url, read_timeout=0.5)
    key = _key()
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"stalled body")
    proxy.add_rule(Rule(Delay(5.0, "during_response"), method="GET"))
    response = s3.get_object(Bucket=BUCKET, Key=key)  # the head arrives on time
    assert response["ContentLength"] == len(b"stalled body")
    with pytest.raises(ReadTimeoutError):
        response["Body"].read()


def test_blackhole_never_answers(proxy: FaultProxy) -> None:
    s3 = _client(proxy.url, read_timeout=0.5)
    proxy.add_rule(Rule(Blackhole(), method="HEAD"))
    with pytest.raises(ReadTimeoutError):
        s3.head_object(Bucket=BUCKET, Key="whatever")
    assert proxy.requests[-1].status is None
    assert proxy.requests[-1].fault == "Blackhole"


def test_corrupt_request_byte_in_flight(proxy: FaultProxy) -> None:
    """moto does not verify checksums, so the flipped bit is stored: proof it happened in
    flight. (Reading back must not validate the stored checksum either.)"""
    s3 = _client(proxy.url, response_checksum_validation="when_required")
    key = _key()
    data = os.urandom(300_000)
    offset = 200_001  # inside the fourth 64 KiB piece
    proxy.add_rule(Rule(CorruptRequestByte(offset), method="PUT"))
    s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    stored = _get(s3, key)
    assert len(stored) == len(data)
    assert [i for i in range(len(data)) if stored[i] != data[i]] == [offset]
    assert stored[offset] == data[offset] ^ 0x01
    assert proxy.stats().faults_injected == {"CorruptRequestByte": 1}


def test_chunked_request_with_expect_continue(proxy: FaultProxy) -> None:
    """boto3 over plain HTTP sends checksums in headers, so drive chunked framing by hand."""
    keys = [_key(), _key()]
    pieces = [os.urandom(100_000), b"", os.urandom(7), os.urandom(70_000)]
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    try:
        # Two requests on one client connection: it stays usable although moto closes its
        # side after every response.
        for key in keys:
            conn.request(
                "PUT",
                f"/{BUCKET}/{key}",
                body=iter(pieces),
                headers={"Expect": "100-continue"},
                encode_chunked=True,
            )
            response = conn.getresponse()
            response.read()
            assert response.status == 200
    finally:
        conn.close()
    s3 = _client(proxy.url)
    for key in keys:
        assert _get(s3, key) == b"".join(pieces)
    assert proxy.stats().bytes_to_upstream == 2 * sum(map(len, pieces))


def test_pause_refuses_and_resume_listens_on_same_port(proxy: FaultProxy) -> None:
    s3 = _client(proxy.url)
    key = _key()
    url = proxy.url
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"1")  # leaves a pooled keep-alive connection
    proxy.pause()
    with pytest.raises(EndpointConnectionError):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"2")
    proxy.resume()
    assert proxy.url == url
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"3")
    assert _get(s3, key) == b"3"


def test_stop_closes_open_connections(moto_url: str) -> None:
    proxy = FaultProxy(moto_url).start()
    proxy.add_rule(Rule(Blackhole()))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
        # the proxy has taken the request in (and holds it) before it stops
        wait_for(
            lambda: [r for r in proxy.requests if r.path == "/x" and r.fault == "Blackhole"],
            timeout=10,
            interval=0.01,
            what="the proxy to accept the request",
        )
        proxy.stop()
        with contextlib.suppress(ConnectionResetError):  # FIN or RST, both are fine
            assert sock.recv(10) == b""
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()


@pytest.mark.parametrize(
    ("method", "target", "operation"),
    [
        ("POST", "/b/k?uploads", "CreateMultipartUpload"),
        ("GET", "/b?uploads", "ListMultipartUploads"),
        ("PUT", "/b/k?partNumber=3&uploadId=u", "UploadPart"),
        ("POST", "/b/k?uploadId=u", "CompleteMultipartUpload"),
        ("DELETE", "/b/k?uploadId=u", "AbortMultipartUpload"),
        ("GET", "/b/k?uploadId=u", "ListParts"),
        ("PUT", "/b/k", "PutObject"),
        ("PUT", "/b", "CreateBucket"),
        ("GET", "/b?list-type=2&prefix=x", "ListObjectsV2"),
    ],
)
def test_operation_names(method: str, target: str, operation: str) -> None:
    path, _, query = target.partition("?")
    assert s3_operation(method, path, query) == operation
