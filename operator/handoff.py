"""The operator's end of a running uploader pod's request for more work (#19).

A pod done with its batch asks, with that batch's results; the answer is its next batch,
or an empty one that tells it to end. So a pod drains its node's queue while work keeps
arriving, instead of one pod per look at the queue. The HTTPS server runs in threads of
its own (`webhook`); the scheduler on kopf's event loop: the desk carries each request
from one to the other and the answer back. The pod pins the certificate the server
presents (its SHA-256), since it reaches the operator by an address no certificate names.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
from collections.abc import Callable, Coroutine
from concurrent.futures import TimeoutError as FutureTimeout
from http import HTTPStatus
from typing import Any

from voicevault.contract import BatchFileError, BatchSpec, MoreRequest

ANSWER_TIMEOUT_S = 45.0  # the pod waits 60 s; marking a batch Scheduled takes far less
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.S)

log = logging.getLogger("voicevault.operator.handoff")

Handler = Callable[[MoreRequest, str], Coroutine[Any, Any, BatchSpec]]


class RefusalError(Exception):
    """The request is not one this operator answers with work: the pod ends its run."""

    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def resolve_url(configured: str, bind_address: str, port: int, pod_ip: str | None) -> str | None:
    """The URL given to pods: the configured one, else the operator pod's own IP, else the
    bind address when it names one host; None when pods are not to ask ("off")."""
    if configured == "off":
        return None
    if configured:
        return configured
    host = pod_ip or (bind_address if bind_address not in ("", "0.0.0.0", "::") else None)  # noqa: S104
    if not host:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the first certificate's DER form, as the pod compares it."""
    found = _PEM.search(cert_pem)
    if found is None:
        return ""
    return hashlib.sha256(base64.b64decode(b"".join(found.group(1).split()))).hexdigest()


class HandoffDesk:
    def __init__(self, url: str | None, cert: Callable[[], bytes]) -> None:
        self.url = url
        self._cert = cert
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handler: Handler | None = None

    def attach(self, loop: asyncio.AbstractEventLoop, handler: Handler) -> None:
        self._loop, self._handler = loop, handler

    def detach(self) -> None:
        self._loop = self._handler = None

    def address(self) -> tuple[str, str] | None:
        """(URL, certificate fingerprint) for a new pod, or None: no more work for it."""
        pem = self._cert()
        if not self.url or self._handler is None or not pem:
            return None
        return self.url, fingerprint(pem)

    def serve(self, body: bytes, authorization: str) -> tuple[HTTPStatus, bytes]:
        """In the server's thread: the next batch as JSON, or a status and a reason."""
        loop, handler = self._loop, self._handler
        if loop is None or handler is None:
            return HTTPStatus.SERVICE_UNAVAILABLE, b'{"error":"not leading"}'
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return HTTPStatus.UNAUTHORIZED, b'{"error":"a bearer token is needed"}'
        try:
            request = MoreRequest.from_json(body)
        except BatchFileError as exc:
            return HTTPStatus.BAD_REQUEST, _error(str(exc))
        future = asyncio.run_coroutine_threadsafe(handler(request, token), loop)
        try:
            spec = future.result(timeout=ANSWER_TIMEOUT_S)
        except RefusalError as exc:
            return exc.status, _error(str(exc))
        except FutureTimeout:
            # not cancelled: the batch it is marking is found unreceived when the pod ends
            return HTTPStatus.SERVICE_UNAVAILABLE, b'{"error":"no answer in time"}'
        except Exception:
            log.exception("a request for more work failed")
            return HTTPStatus.INTERNAL_SERVER_ERROR, b'{"error":"internal error"}'
        return HTTPStatus.OK, spec.to_json().encode()


def _error(reason: str) -> bytes:
    return json.dumps({"error": reason}).encode()
