"""Fault-injecting HTTP/1.1 reverse proxy that sits between boto3 and a local S3 server.

Why a proxy rather than mocks: the uploader's retry, resume and timeout logic must be tested
against real sockets, because that is where the faults happen (a reset in the middle of a
part, a 503 storm, a server that stops answering). The proxy forwards requests byte for byte
(the ``Host`` header included, since SigV4 signs it) and injects the faults chosen by
:class:`Rule` objects.

Design notes:

* One asyncio event loop in a background thread; the test thread talks to it through
  thread-safe methods (:meth:`FaultProxy.add_rule`, :meth:`FaultProxy.stats`, ...).
* Every client connection gets its own upstream connection, opened lazily and reopened when
  the upstream closes it (moto's Werkzeug server closes after every response), so the
  client side keeps its keep-alive connection.
* Bodies are streamed in 64 KiB pieces with their original framing (``Content-Length``,
  ``chunked`` with the same chunk sizes and trailers, or read-until-close for responses); a
  corrupted byte is flipped in flight. Nothing is buffered beyond a piece.
* ``Expect: 100-continue``: the proxy answers ``100 Continue`` itself right before it reads a
  body it is going to forward, and strips ``Expect`` upstream (SigV4 never signs it). A rule
  that answers without forwarding sends its final response without ``100 Continue``, with
  ``Connection: close``, and then discards what the client still sends until it closes
  (a "lingering close", so the response is not lost to a TCP reset).
* Operation names in :meth:`FaultProxy.stats` assume path-style addressing
  (``/bucket/key``), except for requests to AWS virtual-host names, whose bucket is read
  from the ``Host`` header.
* AWS mode (``tls`` given): the proxy is also an HTTPS forward proxy. A client with
  ``HTTPS_PROXY`` pointing at it sends ``CONNECT bucket.s3.amazonaws.com:443``; the
  proxy answers, then speaks TLS with a certificate for the AWS names (signed by the
  test's CA) and serves the tunnelled requests like any other. The client never resolves
  an AWS name and no packet leaves loopback. With ``bucket_regions``, a request signed for
  or sent to another region than its bucket's is answered as S3 answers it
  (:class:`AwsRegions`), so botocore's real region redirector runs.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import email.utils
import http
import json
import logging
import re
import signal
import socket
import ssl
import struct
import sys
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypeAlias, TypeVar

__all__ = [
    "Action",
    "AwsRegions",
    "Blackhole",
    "CorruptRequestByte",
    "Delay",
    "FaultProxy",
    "ProxyStats",
    "RequestRecord",
    "ResetConnection",
    "Respond",
    "Rule",
    "main",
]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

PIECE = 64 * 1024
"""Largest body piece read or written at once; bounds the proxy's memory per connection."""
MAX_HEAD = 64 * 1024
"""Largest request/response head (and chunk-size line) the proxy accepts."""
LOG_LIMIT = 10_000
"""How many :class:`RequestRecord` entries :attr:`FaultProxy.requests` keeps."""
LINGER_SECONDS = 2.0
"""How long to discard client input after an early error response before closing."""

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "upgrade",
    }
)


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Respond:
    """Answer with an S3-style XML error instead of forwarding the request.

    ``elements``: more XML elements after the message (``("Region", "eu-west-1")``);
    ``headers``: more response headers.
    """

    status: int = 503
    code: str = "SlowDown"
    message: str = "Please reduce your request rate."
    elements: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ResetConnection:
    """Abort the client's TCP connection with a RST (SO_LINGER 0).

    * both ``None``: reset right after the request head; nothing reaches the upstream.
    * ``after_request_bytes=N``: forward the head and the first N body bytes, then reset
      both sides (an interrupted part). If the body has at most N bytes, the whole request is
      forwarded, the upstream's response head is awaited (so the upstream has acted on it),
      and the client is reset without seeing any of it (a lost response).
    * ``after_response_bytes=N`` (request forwarded whole): relay the response head and the
      first N body bytes, then reset. A response body of at most N bytes arrives whole.
    """

    after_request_bytes: int | None = None
    after_response_bytes: int | None = None


@dataclass(frozen=True)
class Delay:
    """Slow the response down, to make client timeouts fire.

    ``before_response``: the request is forwarded and the upstream has answered, then the
    proxy sleeps before relaying anything (the upstream *did* act on the request).
    ``during_response``: the response head is relayed, then the proxy sleeps before the body
    (no visible effect when the body is empty).
    """

    seconds: float
    where: Literal["before_response", "during_response"] = "before_response"
    # set by the test to end the delay early: a hold that lasts exactly as long as needed
    release: threading.Event | None = None


@dataclass(frozen=True)
class CorruptRequestByte:
    """Flip the lowest bit of the request body byte at ``offset`` while forwarding.

    The offset counts message-body bytes after HTTP framing is removed (so with
    ``aws-chunked`` content encoding it includes the aws-chunked framing). No effect when
    the body is shorter.
    """

    offset: int


@dataclass(frozen=True)
class Blackhole:
    """Accept the request and never answer, until the client disconnects or the proxy stops."""


Action: TypeAlias = Respond | ResetConnection | Delay | CorruptRequestByte | Blackhole


@dataclass(eq=False)
class Rule:
    """A matcher plus an action; rules are tried in the order they were added.

    A request matches when every given criterion holds: ``method`` (case-insensitive),
    ``path_regex`` (``re.search`` on the raw path without the query), ``query_contains``
    (substring of the raw query string). Each matching request increments ``matched``;
    the first ``after`` matches are let through, then the rule applies ``times`` times
    (``None`` = forever) and ``applied`` counts those. The first rule that applies wins;
    rules behind it are not consulted for that request.
    """

    action: Action
    method: str | None = None
    path_regex: str | None = None
    query_contains: str | None = None
    times: int | None = None
    after: int = 0
    matched: int = field(default=0, init=False)
    applied: int = field(default=0, init=False)

    def matches(self, method: str, path: str, query: str) -> bool:
        """Whether the matcher accepts a request (counters untouched)."""
        if self.method is not None and self.method.upper() != method.upper():
            return False
        if self.path_regex is not None and re.search(self.path_regex, path) is None:
            return False
        return self.query_contains is None or self.query_contains in query


# --------------------------------------------------------------------------- AWS regions

_AWS_HOST_RE = re.compile(
    r"(?:(?P<bucket>[a-z0-9][a-z0-9.-]*)\.)?s3(?:[.-](?P<region>[a-z]{2}(?:-[a-z]+)+-[0-9]+))?"
    r"\.amazonaws\.com(?::443)?",
    re.IGNORECASE,
)
_SCOPE_RE = re.compile(r"Credential=[^/,]+/[0-9]{8}/(?P<region>[^/,]+)/s3/aws4_request")
_REDIRECT_MESSAGE = (
    "The bucket you are attempting to access must be addressed using the specified "
    "endpoint. Please send all future requests to this endpoint."
)


@dataclass(frozen=True)
class AwsRegions:
    """Where each bucket lives, for answering wrong-region requests as S3 does.

    * sent to a regional endpoint of another region (``bucket.s3.us-west-2...``):
      ``301 PermanentRedirect``, the ``x-amz-bucket-region`` header and the bucket's
      endpoint in the error XML;
    * sent to the bucket's own or the global endpoint but signed for another region:
      ``400 AuthorizationHeaderMalformed``, the expected ``<Region>`` in the error XML.

    ``hints=False`` (or a bucket in ``without_hints``) models a wrong-region answer that
    does not say where the bucket is: ``301 PermanentRedirect`` without the header,
    ``<Region>`` or ``<Endpoint>``, and ``HEAD`` requests (botocore's fallback
    ``HeadBucket``) go to the upstream, whose policy decides. Buckets not listed are
    forwarded untouched. Both collections may grow while the proxy runs.
    """

    buckets: dict[str, str]
    hints: bool = True
    without_hints: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class _AwsTarget:
    bucket: str
    endpoint_region: str | None  # None: the global endpoint
    signing_region: str | None
    path_style: bool


def aws_target(host: str, path: str, authorization: str) -> _AwsTarget | None:
    """The bucket and regions of a request to an AWS S3 host name, or ``None``."""
    match = _AWS_HOST_RE.fullmatch(host)
    if match is None:
        return None
    bucket = match["bucket"]
    path_style = bucket is None
    if path_style:
        bucket = path.lstrip("/").partition("/")[0]
        if not bucket:
            return None
    scope = _SCOPE_RE.search(authorization)
    return _AwsTarget(
        bucket=bucket.lower() if not path_style else bucket,
        endpoint_region=match["region"].lower() if match["region"] else None,
        signing_region=scope["region"] if scope else None,
        path_style=path_style,
    )


def wrong_region_answer(regions: AwsRegions, target: _AwsTarget, method: str) -> Respond | None:
    """S3's answer to a request that reached the wrong region, or ``None`` if it did not."""
    home = regions.buckets.get(target.bucket)
    if home is None:
        return None
    endpoint = target.endpoint_region
    wrong_endpoint = endpoint is not None and endpoint != home
    wrong_signature = target.signing_region not in (None, home)
    if not wrong_endpoint and not wrong_signature:
        return None
    if not regions.hints or target.bucket in regions.without_hints:
        if method == "HEAD":
            return None  # botocore's HeadBucket fallback: the upstream's policy answers
        return Respond(301, "PermanentRedirect", _REDIRECT_MESSAGE, (("Bucket", target.bucket),))
    if wrong_endpoint:
        host = f"s3.{home}.amazonaws.com"
        return Respond(
            301,
            "PermanentRedirect",
            _REDIRECT_MESSAGE,
            (
                ("Endpoint", host if target.path_style else f"{target.bucket}.{host}"),
                ("Bucket", target.bucket),
            ),
            (("x-amz-bucket-region", home),),
        )
    return Respond(
        400,
        "AuthorizationHeaderMalformed",
        f"The authorization header is malformed; the region '{target.signing_region}' is "
        f"wrong; expecting '{home}'",
        (("Region", home),),
        (("x-amz-bucket-region", home),) if method == "HEAD" else (),
    )


# --------------------------------------------------------------------------- records


@dataclass
class RequestRecord:
    """One proxied request. ``status`` is the status the client got (``None``: none, e.g.
    reset or blackholed); ``fault`` names the action applied. Filled in while the request
    runs, so a record of an in-flight request may still change."""

    method: str
    path: str
    query: str
    operation: str
    status: int | None = None
    fault: str | None = None


@dataclass(frozen=True)
class ProxyStats:
    """A snapshot of the proxy's counters.

    ``requests`` counts requests by (method, S3 operation); ``faults_injected`` counts
    faults that took effect, by action class name; the byte counters count message-body
    bytes forwarded (without HTTP framing).
    """

    requests: dict[tuple[str, str], int]
    faults_injected: dict[str, int]
    bytes_to_upstream: int
    bytes_to_client: int

    @property
    def bytes_forwarded(self) -> int:
        """Body bytes forwarded in both directions."""
        return self.bytes_to_upstream + self.bytes_to_client


def s3_operation(method: str, path: str, query: str) -> str:
    """Name the S3 operation of a path-style request (``Other`` when unknown)."""
    params = urllib.parse.parse_qs(query, keep_blank_values=True)
    has_key = "/" in path.strip("/")
    method = method.upper()
    if "uploads" in params:
        return {"POST": "CreateMultipartUpload", "GET": "ListMultipartUploads"}.get(method, "Other")
    if "uploadId" in params:
        if method == "PUT" and "partNumber" in params:
            return "UploadPart"
        return {
            "POST": "CompleteMultipartUpload",
            "DELETE": "AbortMultipartUpload",
            "GET": "ListParts",
        }.get(method, "Other")
    if method == "POST" and "delete" in params:
        return "DeleteObjects"
    if params:
        # Sub-resources (?acl, ?tagging, ?list-type=2, ...) are not told apart further,
        # except listing, which is frequent.
        if method == "GET" and not has_key and ("list-type" in params or "prefix" in params):
            return "ListObjectsV2" if "list-type" in params else "ListObjects"
        return "Other"
    if has_key:
        return {
            "PUT": "PutObject",
            "GET": "GetObject",
            "HEAD": "HeadObject",
            "DELETE": "DeleteObject",
        }.get(method, "Other")
    if path.strip("/"):
        return {
            "PUT": "CreateBucket",
            "GET": "ListObjects",
            "HEAD": "HeadBucket",
            "DELETE": "DeleteBucket",
        }.get(method, "Other")
    return "ListBuckets" if method == "GET" else "Other"


# --------------------------------------------------------------------------- HTTP bits


class _ProtocolError(Exception):
    """The peer sent something that is not HTTP/1.1 as the proxy understands it."""


class _CutError(Exception):
    """The proxy reset the connection on purpose; the exchange ends here."""


@dataclass
class _Head:
    """A parsed request or response head; header names keep their case and order."""

    first_line: str
    headers: list[tuple[str, str]]

    def get(self, name: str) -> str | None:
        lname = name.lower()
        values = [v for k, v in self.headers if k.lower() == lname]
        return ", ".join(values) if values else None

    def tokens(self, name: str) -> list[str]:
        value = self.get(name) or ""
        return [t.strip().lower() for t in value.split(",") if t.strip()]

    def encode(self, headers: list[tuple[str, str]]) -> bytes:
        lines = [self.first_line, *(f"{k}: {v}" for k, v in headers), "", ""]
        return "\r\n".join(lines).encode("latin-1")


async def _read_head(reader: asyncio.StreamReader) -> _Head | None:
    """Read one head; ``None`` on a clean EOF before any byte of it."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise _ProtocolError("connection closed inside a head") from exc
        return None
    except asyncio.LimitOverrunError as exc:
        raise _ProtocolError("head too large") from exc
    lines = raw.decode("latin-1").lstrip("\r\n").split("\r\n")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _ProtocolError(f"bad header line {line!r}")
        headers.append((name, value.strip()))
    return _Head(lines[0], headers)


Framing: TypeAlias = tuple[Literal["length", "chunked", "eof"], int]


def _content_length(head: _Head) -> int | None:
    value = head.get("Content-Length")
    if value is None:
        return None
    try:
        lengths = {int(v) for v in value.split(",")}
    except ValueError as exc:
        raise _ProtocolError(f"bad Content-Length {value!r}") from exc
    if len(lengths) != 1 or min(lengths) < 0:
        raise _ProtocolError(f"bad Content-Length {value!r}")
    return lengths.pop()


def _is_chunked(head: _Head) -> bool:
    codings = head.tokens("Transfer-Encoding")
    return bool(codings) and codings[-1] == "chunked"


def _request_framing(head: _Head) -> Framing:
    if _is_chunked(head):
        return ("chunked", 0)
    return ("length", _content_length(head) or 0)


def _response_framing(request_method: str, status: int, head: _Head) -> Framing:
    if request_method == "HEAD" or 100 <= status < 200 or status in (204, 304):
        return ("length", 0)
    if _is_chunked(head):
        return ("chunked", 0)
    length = _content_length(head)
    return ("eof", 0) if length is None else ("length", length)


def _forwardable(head: _Head, *drop: str) -> list[tuple[str, str]]:
    """Headers minus hop-by-hop ones (and those named in ``Connection``)."""
    dropped = _HOP_BY_HOP | set(head.tokens("Connection")) | {d.lower() for d in drop}
    return [(k, v) for k, v in head.headers if k.lower() not in dropped]


class _BodyCopier:
    """Copies one message body piece by piece, keeping its framing.

    ``cut_at`` stops after that many body bytes (returning ``False``); ``corrupt_at`` flips
    the lowest bit of that body byte; ``writer=None`` discards the body. ``on_bytes`` is
    told of each piece before it is written, so a count never trails what the peer has.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter | None,
        *,
        cut_at: int | None = None,
        corrupt_at: int | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.cut_at = cut_at
        self.corrupt_at = corrupt_at
        self.on_bytes = on_bytes
        self.pos = 0
        self.corrupted = False

    async def copy(self, framing: Framing) -> bool:
        """Copy the body; ``True`` when it was copied whole, ``False`` when cut."""
        kind, length = framing
        if kind == "length":
            return await self._copy_exactly(length)
        if kind == "eof":
            while True:
                want = self._want(PIECE)
                if want == 0:
                    return False
                piece = await self.reader.read(want)
                if not piece:
                    return True
                await self._emit(piece)
        while True:  # chunked
            line = await self.reader.readuntil(b"\r\n")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise _ProtocolError(f"bad chunk size line {line!r}") from exc
            if size < 0:
                raise _ProtocolError("negative chunk size")
            if size == 0:
                await self._write(line)
                while True:  # trailer section, up to and including the empty line
                    trailer = await self.reader.readuntil(b"\r\n")
                    await self._write(trailer)
                    if trailer == b"\r\n":
                        return True
            if self._want(1) == 0:
                return False
            await self._write(line)
            if not await self._copy_exactly(size):
                return False
            crlf = await self.reader.readexactly(2)
            if crlf != b"\r\n":
                raise _ProtocolError("chunk not followed by CRLF")
            await self._write(crlf)

    def _want(self, n: int) -> int:
        return n if self.cut_at is None else max(0, min(n, self.cut_at - self.pos))

    async def _copy_exactly(self, n: int) -> bool:
        while n > 0:
            want = self._want(min(n, PIECE))
            if want == 0:
                return False
            piece = await self.reader.read(want)
            if not piece:
                raise asyncio.IncompleteReadError(b"", n)
            await self._emit(piece)
            n -= len(piece)
        return True

    async def _emit(self, piece: bytes) -> None:
        at = self.corrupt_at
        if at is not None and self.pos <= at < self.pos + len(piece):
            mutable = bytearray(piece)
            mutable[at - self.pos] ^= 0x01
            piece = bytes(mutable)
            self.corrupted = True
        self.pos += len(piece)
        if self.on_bytes is not None:
            self.on_bytes(len(piece))
        await self._write(piece)

    async def _write(self, data: bytes) -> None:
        if self.writer is not None:
            self.writer.write(data)
            await self.writer.drain()


async def _pause(delay: Delay) -> None:
    """`delay.seconds`, or less when its release is set first."""
    if delay.release is None:
        await asyncio.sleep(delay.seconds)
        return
    await asyncio.to_thread(delay.release.wait, delay.seconds)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST rather than a FIN, like a crashed peer."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then discard input until the client closes (bounded in time).

    Closing a socket with unread input sends a RST, which can destroy the response that is
    still in the client's receive buffer; this is the classic "lingering close".
    """
    if writer.can_write_eof():
        writer.write_eof()
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(LINGER_SECONDS):
            while await reader.read(PIECE):
                pass


def _error_response(
    status: int,
    code: str,
    message: str,
    *,
    head_only: bool,
    close: bool,
    elements: Sequence[tuple[str, str]] = (),
    extra_headers: Sequence[tuple[str, str]] = (),
) -> tuple[bytes, bytes]:
    """An S3-style XML error response as (head, body); ``elements`` go after the
    message (``<Region>``, ``<Endpoint>``...), ``extra_headers`` after the usual ones."""
    request_id = uuid.uuid4().hex[:16].upper()
    extra = "".join(f"<{name}>{_xml_escape(value)}</{name}>" for name, value in elements)
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{_xml_escape(code)}</Code><Message>{_xml_escape(message)}</Message>"
        f"{extra}<RequestId>{request_id}</RequestId><HostId>faultproxy</HostId></Error>"
    ).encode()
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    headers = [
        ("Date", email.utils.formatdate(usegmt=True)),
        ("Server", "faultproxy"),
        ("x-amz-request-id", request_id),
        ("Content-Type", "application/xml"),
        ("Content-Length", str(len(body))),
        *extra_headers,
    ]
    if close:
        headers.append(("Connection", "close"))
    head = _Head(f"HTTP/1.1 {status} {reason}", headers).encode(headers)
    return head, b"" if head_only else body


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --------------------------------------------------------------------------- the proxy


@dataclass
class _Exchange:
    """Per-request state shared by the forwarding steps."""

    head: _Head
    method: str
    target: str
    record: RequestRecord
    rule: Rule | None
    client_keep_alive: bool
    expects_continue: bool
    framing: Framing

    @property
    def has_body(self) -> bool:
        kind, length = self.framing
        return kind == "chunked" or length > 0


class _Upstream:
    """The lazily opened upstream connection that belongs to one client connection."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.reader is None or self.writer is None or self.reader.at_eof():
            self.close()
            self.reader, self.writer = await asyncio.open_connection(
                self.host, self.port, limit=MAX_HEAD
            )
        return self.reader, self.writer

    def close(self, *, abort: bool = False) -> None:
        if self.writer is not None:
            if abort:
                _abort(self.writer)
            else:
                self.writer.close()
        self.reader = self.writer = None


class FaultProxy:
    """A fault-injecting reverse proxy for one upstream S3 endpoint.

    ``start()`` serves on ``127.0.0.1`` (``port=0``: a free port, kept across
    ``pause()``/``resume()``) from a background thread; ``url`` is where boto3 should point.
    ``tls``: also accept ``CONNECT`` and serve TLS inside it (AWS mode, with ``url`` as the
    client's ``HTTPS_PROXY``); ``regions``: answer wrong-region requests as S3 does.
    """

    def __init__(
        self,
        upstream: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ssl.SSLContext | None = None,
        regions: AwsRegions | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// URL, not {upstream!r}")
        self.upstream = upstream
        self._up_host = parts.hostname
        self._up_port = parts.port or 80
        self.host = host
        self.port = port
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._log: collections.deque[RequestRecord] = collections.deque(maxlen=LOG_LIMIT)
        self._requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self._faults: collections.Counter[str] = collections.Counter()
        self._bytes_up = 0
        self._bytes_down = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._clients: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._tls = tls
        self._regions = regions
        self._tunnels: list[str] = []

    # ----------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` once started."""
        if not self.port:
            raise RuntimeError("FaultProxy is not started")
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        """Start serving; returns once the listening socket is bound."""
        if self._thread is not None:
            raise RuntimeError("FaultProxy already started")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._listen())
            except BaseException as exc:  # reported to start()'s caller
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"faultproxy-{id(self):x}", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = self._loop = None
            raise failure[0]
        return self

    def stop(self) -> None:
        """Close the listener and every open connection, then join the thread."""
        if self._thread is None or self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # loop already gone
            self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = self._loop = None

    def pause(self) -> None:
        """Simulate a vanished server: stop listening (new connections are refused) and
        reset every open connection, including idle keep-alive ones."""
        self._call(self._shutdown())

    def resume(self) -> None:
        """Listen again on the same port."""
        self._call(self._listen())

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("FaultProxy is not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._on_client, self.host, self.port, limit=MAX_HEAD, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        tasks = list(self._clients)
        for writer in self._clients.values():
            _abort(writer)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Let the transports' close callbacks run so no socket outlives the loop.
        for _ in range(3):
            await asyncio.sleep(0)

    # ----------------------------------------------------------------- rules & stats

    def add_rule(self, rule: Rule) -> Rule:
        """Append a rule (tried after the existing ones) and return it."""
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear_rules(self) -> None:
        """Remove every rule; requests in flight keep the action they already got."""
        with self._lock:
            self._rules.clear()

    def stats(self) -> ProxyStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            return ProxyStats(
                requests=dict(self._requests),
                faults_injected=dict(self._faults),
                bytes_to_upstream=self._bytes_up,
                bytes_to_client=self._bytes_down,
            )

    @property
    def requests(self) -> list[RequestRecord]:
        """The last :data:`LOG_LIMIT` requests, oldest first."""
        with self._lock:
            return list(self._log)

    @property
    def tunnels(self) -> list[str]:
        """The ``CONNECT`` authorities (``host:port``) clients asked for, oldest first."""
        with self._lock:
            return list(self._tunnels)

    def _begin(
        self, method: str, target: str, aws: _AwsTarget | None = None
    ) -> tuple[RequestRecord, Rule | None]:
        path, _, query = target.partition("?")
        named = f"/{aws.bucket}{path}" if aws is not None and not aws.path_style else path
        operation = s3_operation(method, named, query)
        record = RequestRecord(method, path, query, operation)
        chosen: Rule | None = None
        with self._lock:
            self._log.append(record)
            self._requests[method, operation] += 1
            for rule in self._rules:
                if not rule.matches(method, path, query):
                    continue
                rule.matched += 1
                if rule.matched <= rule.after:
                    continue
                if rule.times is not None and rule.applied >= rule.times:
                    continue
                rule.applied += 1
                chosen = rule
                break
        if chosen is not None:
            record.fault = type(chosen.action).__name__
        return record, chosen

    def _count_fault(self, action: Action) -> None:
        with self._lock:
            self._faults[type(action).__name__] += 1

    def _count_bytes(self, *, up: int = 0, down: int = 0) -> None:
        with self._lock:
            self._bytes_up += up
            self._bytes_down += down

    # ----------------------------------------------------------------- connections

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients[task] = writer
        upstream = _Upstream(self._up_host, self._up_port)
        try:
            while await self._exchange(reader, writer, upstream):
                pass
        except _CutError:
            pass
        except (ConnectionError, asyncio.IncompleteReadError, _ProtocolError, OSError) as exc:
            log.debug("faultproxy connection ended: %r", exc)
            _abort(writer)
        except asyncio.CancelledError:
            # Only _shutdown() cancels these tasks. Finish normally: on Python 3.11 the stream
            # protocol's done-callback calls task.exception(), which raises for a cancelled
            # task and gets logged as an error.
            _abort(writer)
        except Exception:
            log.exception("faultproxy connection handler failed")
            _abort(writer)
        finally:
            upstream.close()
            writer.close()
            self._clients.pop(task, None)

    async def _exchange(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: _Upstream,
    ) -> bool:
        """Serve one request; ``True`` when the client connection stays open."""
        head = await _read_head(reader)
        if head is None:
            return False
        try:
            method, target, version = head.first_line.split(" ")
        except ValueError as exc:
            raise _ProtocolError(f"bad request line {head.first_line!r}") from exc
        if method.upper() == "CONNECT":
            return await self._tunnel(reader, writer, target)
        aws = aws_target(head.get("Host") or "", target, head.get("Authorization") or "")
        record, rule = self._begin(method, target, aws)
        if rule is None and aws is not None and self._regions is not None:
            answer = wrong_region_answer(self._regions, aws, method.upper())
            if answer is not None:
                rule = Rule(action=answer)
                record.fault = "WrongRegion"
        ex = _Exchange(
            head=head,
            method=method.upper(),
            target=target,
            record=record,
            rule=rule,
            client_keep_alive=version == "HTTP/1.1" and "close" not in head.tokens("Connection"),
            expects_continue="100-continue" in head.tokens("Expect"),
            framing=_request_framing(head),
        )
        action = rule.action if rule is not None else None
        match action:
            case Blackhole():
                self._count_fault(action)
                while await reader.read(PIECE):
                    pass
                return False
            case Respond():
                self._count_fault(action)
                return await self._respond(reader, writer, ex, action)
            case ResetConnection(after_request_bytes=None, after_response_bytes=None):
                self._count_fault(action)
                _abort(writer)
                raise _CutError
            case _:
                return await self._forward(reader, writer, upstream, ex, action)

    async def _tunnel(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, authority: str
    ) -> bool:
        """Accept a ``CONNECT`` and speak TLS inside it (AWS mode only)."""
        if self._tls is None:
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return False
        with self._lock:
            self._tunnels.append(authority)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await writer.start_tls(self._tls)
        return True

    async def _respond(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        ex: _Exchange,
        action: Respond,
    ) -> bool:
        early = ex.expects_continue and ex.has_body
        keep = ex.client_keep_alive and not early
        if not early:
            # Read the body so the connection stays in sync for the next request.
            await _BodyCopier(reader, None).copy(ex.framing)
        head, body = _error_response(
            action.status,
            action.code,
            action.message,
            head_only=ex.method == "HEAD",
            close=not keep,
            elements=action.elements,
            extra_headers=action.headers,
        )
        ex.record.status = action.status
        writer.write(head + body)
        await writer.drain()
        if keep:
            return True
        await _linger(reader, writer)
        return False

    async def _forward(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: _Upstream,
        ex: _Exchange,
        action: Action | None,
    ) -> bool:
        reset = action if isinstance(action, ResetConnection) else None
        delay = action if isinstance(action, Delay) else None
        corrupt = action if isinstance(action, CorruptRequestByte) else None

        try:
            up_reader, up_writer = await upstream.open()
        except OSError as exc:
            log.debug("faultproxy cannot reach upstream: %r", exc)
            head, body = _error_response(
                502, "BadGateway", str(exc), head_only=ex.method == "HEAD", close=True
            )
            ex.record.status = 502
            writer.write(head + body)
            await writer.drain()
            await _linger(reader, writer)
            return False

        if ex.expects_continue and ex.has_body:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()

        # --- request
        drop = ["Expect"]
        if ex.framing[0] == "chunked":
            drop.append("Content-Length")
        up_writer.write(ex.head.encode(_forwardable(ex.head, *drop)))
        request_body = _BodyCopier(
            reader,
            up_writer,
            cut_at=reset.after_request_bytes if reset is not None else None,
            corrupt_at=corrupt.offset if corrupt is not None else None,
        )
        try:
            whole = await request_body.copy(ex.framing)
        finally:
            self._count_bytes(up=request_body.pos)
        if request_body.corrupted and corrupt is not None:
            self._count_fault(corrupt)
        if not whole:
            assert reset is not None
            self._count_fault(reset)
            upstream.close(abort=True)
            _abort(writer)
            raise _CutError

        # --- response head (interim 1xx responses are dropped: the client got its own)
        while True:
            up_head = await _read_head(up_reader)
            if up_head is None:
                raise ConnectionResetError("upstream closed before responding")
            try:
                up_version, status_text = up_head.first_line.split(" ", 2)[:2]
                status = int(status_text)
            except ValueError as exc:
                raise _ProtocolError(f"bad status line {up_head.first_line!r}") from exc
            if not 100 <= status < 200 or status == 101:
                break

        if reset is not None and reset.after_response_bytes is None:
            # The request went through whole; the client loses the response.
            self._count_fault(reset)
            upstream.close(abort=True)
            _abort(writer)
            raise _CutError
        if delay is not None and delay.where == "before_response":
            self._count_fault(delay)
            await _pause(delay)

        framing = _response_framing(ex.method, status, up_head)
        upstream_keeps = (
            up_version == "HTTP/1.1"
            and "close" not in up_head.tokens("Connection")
            and framing[0] != "eof"
        )
        keep = ex.client_keep_alive and framing[0] != "eof"
        headers = _forwardable(up_head)
        if not keep:
            headers.append(("Connection", "close"))
        ex.record.status = status
        writer.write(_Head(f"HTTP/1.1 {up_head.first_line.split(' ', 1)[1]}", []).encode(headers))
        await writer.drain()

        if delay is not None and delay.where == "during_response":
            self._count_fault(delay)
            await _pause(delay)

        response_body = _BodyCopier(
            up_reader,
            writer,
            cut_at=reset.after_response_bytes if reset is not None else None,
            on_bytes=lambda n: self._count_bytes(down=n),
        )
        await response_body.copy(framing)
        if reset is not None:
            self._count_fault(reset)
            upstream.close(abort=True)
            _abort(writer)
            raise _CutError
        if not upstream_keeps:
            upstream.close()
        return keep


# --------------------------------------------------------------------------- standalone


def rule_from_dict(data: dict[str, Any]) -> Rule:
    """Build a rule from JSON, e.g.
    ``{"method": "PUT", "times": 2, "action": {"type": "Respond", "status": 503}}``."""
    kinds: dict[str, type[Any]] = {
        cls.__name__: cls
        for cls in (Respond, ResetConnection, Delay, CorruptRequestByte, Blackhole)
    }
    action_data = dict(data["action"])
    action = kinds[action_data.pop("type")](**action_data)
    return Rule(action=action, **{k: v for k, v in data.items() if k != "action"})


def main(argv: list[str] | None = None) -> int:
    """Run the proxy in the foreground until SIGINT/SIGTERM (for poking at it by hand)."""
    parser = argparse.ArgumentParser(prog="python -m tests.bed.faultproxy")
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:5000")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--rules", type=Path, help="JSON file with a list of rules")
    args = parser.parse_args(argv)
    proxy = FaultProxy(args.upstream, port=args.port)
    if args.rules is not None:
        for item in json.loads(args.rules.read_text()):
            proxy.add_rule(rule_from_dict(item))
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    with proxy:
        sys.stdout.write(f"faultproxy {proxy.url} -> {args.upstream}\n")
        sys.stdout.flush()
        done.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
