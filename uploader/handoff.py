"""Ask the operator for the next batch once this one is done (#19).

One HTTPS POST to the operator, with the results of the batch just done and the pod's
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

TIMEOUT_S = 60.0
MAX_ANSWER = 64 << 20  # a batch of the largest size is well under this


class HandoffError(Exception):
    """No next batch from the operator: why, without the token or the URL's secrets."""


def ask_for_more(handoff: HandoffFile, request: MoreRequest) -> BatchSpec:
    """The next batch; raises HandoffError when the operator cannot or will not give one."""
    url = urlsplit(handoff.url)
    if url.scheme != "https" or not url.hostname:
        raise HandoffError("the operator's address is not an https URL")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False  # the pinned fingerprint below is the check
    context.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection(
        url.hostname, url.port or 443, timeout=TIMEOUT_S, context=context
    )
    try:
        conn.connect()
        presented = conn.sock.getpeercert(binary_form=True) if conn.sock else None
        digest = hashlib.sha256(presented or b"").hexdigest()
        if not presented or not hmac.compare_digest(digest, handoff.fingerprint):
            raise HandoffError("the operator presented another certificate than it gave")
        body = request.to_json().encode()
        headers = {
            "Authorization": f"Bearer {handoff.token}",
            "Content-Type": "application/json",
        }
        conn.request("POST", MORE_PATH, body=body, headers=headers)
        answer = conn.getresponse()
        data = answer.read(MAX_ANSWER)
        if answer.status != 200:
            raise HandoffError(f"the operator answered {answer.status} {answer.reason}")
        return BatchSpec.from_json(data)
    except BatchFileError as exc:
        raise HandoffError(f"the operator's answer is not a batch: {exc}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise HandoffError(f"cannot reach the operator ({type(exc).__name__})") from None
    finally:
        conn.close()
