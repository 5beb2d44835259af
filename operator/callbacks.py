"""The Twilio-style recording status callback: form parameters, signature, delivery.

`callback_params` is pure. `deliver` POSTs with a bounded number of attempts and
exponential backoff, and reports what happened; it never raises for a receiver's fault.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from email.utils import format_datetime
from typing import Any

import aiohttp

from voicevault.contract import EncryptionDetails
from voicevault.crds.recording import Phase, RecordingSpec
from voicevault.operator.signature import SIGNATURE_HEADER, twilio_signature

log = logging.getLogger("voicevault.operator.callbacks")
IDEMPOTENCY_HEADER = "I-Twilio-Idempotency-Token"


def callback_params(spec: RecordingSpec, status: dict[str, Any]) -> dict[str, str]:
    """The form parameters Twilio sends for a recording status callback."""
    completed = status.get("phase") == Phase.COMPLETED.value
    params = {
        "AccountSid": spec.account_sid,
        "CallSid": spec.call_sid or "",
        "RecordingSid": str(status.get("sid", "")),
        "RecordingUrl": str(status.get("mediaUrl") or "") if completed else "",
        "RecordingStatus": "completed" if completed else "failed",
        "RecordingDuration": str(spec.duration),
        "RecordingChannels": str(spec.channels),
        "RecordingStartTime": format_datetime(spec.start_time, usegmt=False),
        "RecordingSource": spec.source,
        "RecordingTrack": spec.track,
        "ErrorCode": "0" if completed else str(status.get("errorCode") or 0),
    }
    if spec.conference_sid:
        params["ConferenceSid"] = spec.conference_sid
    if completed and status.get("metadataUrl"):
        # beyond Twilio: the metadata document beside the media (metadataObject on)
        params["RecordingMetadataUrl"] = str(status["metadataUrl"])
    details = status.get("encryptionDetails")
    if completed and details:
        twilio_form = EncryptionDetails.from_mapping(details).to_twilio()
        params["EncryptionDetails"] = json.dumps(twilio_form, separators=(",", ":"))
    return params


def signing_problem(
    namespace: str, secret: str, key: str, data: dict[str, bytes] | None
) -> tuple[str, str] | None:
    """Why callbacks cannot be signed with `key` of Secret `secret` (None: they can).

    `data` is the Secret's data, or None when there is no such Secret.
    """
    if data is None:
        return "SigningSecretNotFound", f"signing Secret {secret!r} not found in {namespace!r}"
    if not data.get(key, b"").strip():
        return (
            "SigningKeyMissing",
            f"signing Secret {secret!r} has no (or an empty) key {key!r}",
        )
    return None


@dataclass(frozen=True)
class Delivery:
    delivered: bool
    attempts: int
    detail: str  # for the condition message: HTTP status or the error kind


async def deliver(
    url: str,
    params: dict[str, str],
    signing_key: str | None,
    *,
    attempts: int = 5,
    timeout: float = 10.0,
    first_delay: float = 1.0,
    idempotency_token: str | None = None,
) -> Delivery:
    """POST the callback; 2xx is delivered, 4xx (but 408/429) is final, the rest retried.

    Every attempt, and every re-send after an operator restart, carries the same
    `idempotency_token` (stable per recording and outcome), so a receiver can drop repeats.
    """
    headers = {"User-Agent": "voicevault-callbacks/1"}
    if idempotency_token:
        headers[IDEMPOTENCY_HEADER] = idempotency_token
    if signing_key:
        headers[SIGNATURE_HEADER] = twilio_signature(signing_key, url, params)
    delay = first_delay
    detail = "not attempted"
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        for attempt in range(1, attempts + 1):
            try:
                async with session.post(
                    url, data=params, headers=headers, allow_redirects=False
                ) as response:
                    detail = f"HTTP {response.status}"
                    if 200 <= response.status < 300:
                        return Delivery(True, attempt, detail)
                    if 400 <= response.status < 500 and response.status not in (408, 429):
                        return Delivery(False, attempt, detail)
            except (aiohttp.ClientError, TimeoutError) as exc:
                detail = type(exc).__name__
            if attempt < attempts:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
    return Delivery(False, attempts, detail)
