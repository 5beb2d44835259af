"""Ask the operator for the next batch once this one is done (#19).

An HTTPS POST to the operator, with the results of the batch just done and the pod's
bearer token; the answer is the next batch, empty when there is no more work. The
operator is reached by an address its certificate need not name (its pod IP), so the
certificate is pinned instead: the connection is used only if the certificate it
presents has the SHA-256 the batch Secret gave, checked before the token is sent.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ssl
from urllib.parse import urlsplit

from voicevault.contract import MORE_PATH, BatchFileError, BatchSpec, HandoffFile, MoreRequest
from voicevault.uploader.kubeapi import STALE_CONNECTION

TIMEOUT_S = 60.0
MAX_ANSWER = 64 << 20  # a batch of the largest size is well under this


class HandoffError(Exception):
    """No next batch from the operator: why, without the token or the URL's secrets."""


class HandoffClient:
    """Asks the operator for batch after batch over one keep-alive connection, so a pod
    that drains its node's queue in many small batches makes one TLS handshake, not one
    per batch. Each new connection's certificate is checked before the token is sent."""

    def __init__(self, handoff: HandoffFile) -> None:
        url = urlsplit(handoff.url)
        if url.scheme != "https" or not url.hostname:
            raise HandoffError("the operator's address is not an https URL")
        self._handoff = handoff
        self._host, self._port = url.hostname, url.port or 443
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._context.check_hostname = False  # the pinned fingerprint is the check
        self._context.verify_mode = ssl.CERT_NONE
        self._conn: http.client.HTTPSConnection | None = None
        self.connections = 0  # opened so far

    def ask(self, request: MoreRequest) -> BatchSpec:
        """The next batch; raises HandoffError when the operator cannot or will not give
        one. A kept connection the operator closed meanwhile (it drops idle ones) is
        replaced once: a request it did read and answer is refused as a repeat (its batch
        number is no longer the pod's latest), and the pod then ends as it would anyway."""
        body = request.to_json().encode()
        try:
            for fresh in (self._conn is None, True):
                conn = self._connection()
                try:
                    return self._exchange(conn, body)
                except STALE_CONNECTION:
                    self.close()
                    if fresh:
                        raise
            raise AssertionError("unreachable")  # pragma: no cover
        except BatchFileError as exc:
            self.close()
            raise HandoffError(f"the operator's answer is not a batch: {exc}") from None
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise HandoffError(f"cannot reach the operator ({type(exc).__name__})") from None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> http.client.HTTPSConnection:
        if self._conn is not None:
            return self._conn
        conn = http.client.HTTPSConnection(
            self._host, self._port, timeout=TIMEOUT_S, context=self._context
        )
        try:
            conn.connect()
            presented = conn.sock.getpeercert(binary_form=True) if conn.sock else None
            digest = hashlib.sha256(presented or b"").hexdigest()
            if not presented or not hmac.compare_digest(digest, self._handoff.fingerprint):
                raise HandoffError("the operator presented another certificate than it gave")
        except BaseException:
            conn.close()
            raise
        self.connections += 1
        self._conn = conn
        return conn

    def _exchange(self, conn: http.client.HTTPSConnection, body: bytes) -> BatchSpec:
        headers = {
            "Authorization": f"Bearer {self._handoff.token}",
            "Content-Type": "application/json",
        }
        conn.request("POST", MORE_PATH, body=body, headers=headers)
        answer = conn.getresponse()
        data = answer.read(MAX_ANSWER)
        if answer.will_close:
            self.close()
        if answer.status != 200:
            self.close()
            raise HandoffError(f"the operator answered {answer.status} {answer.reason}")
        return BatchSpec.from_json(data)
