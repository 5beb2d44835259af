"""X-Twilio-Signature for status callbacks, so receivers can reuse Twilio's validators.

The signature is Base64(HMAC-SHA1(key, URL + name1 + value1 + name2 + value2 ...)) with
the POST parameters sorted by name, exactly as Twilio signs its own webhooks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping

__all__ = ["SIGNATURE_HEADER", "twilio_signature", "verify_twilio_signature"]

SIGNATURE_HEADER = "X-Twilio-Signature"


def twilio_signature(signing_key: str, url: str, params: Mapping[str, str]) -> str:
    """Sign a callback: the full URL (query included) then the sorted form parameters."""
    payload = url + "".join(name + params[name] for name in sorted(params))
    digest = hmac.new(signing_key.encode("utf-8"), payload.encode("utf-8"), hashlib.sha1)
    return base64.b64encode(digest.digest()).decode("ascii")


def verify_twilio_signature(
    signing_key: str, url: str, params: Mapping[str, str], signature: str
) -> bool:
    """Check a signature in constant time, so timing reveals nothing about the expected one."""
    expected = twilio_signature(signing_key, url, params)
    return hmac.compare_digest(expected.encode("ascii"), signature.encode("utf-8", "replace"))
