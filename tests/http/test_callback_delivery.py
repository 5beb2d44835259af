"""`deliver` against a real HTTP server on 127.0.0.1: retries, final answers, the signature.

The receiver answers a script of statuses; the backoff starts at a few milliseconds so
every retry path runs in well under a second.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from tests.support.callbacks import CallbackReceiver
from voicevault.operator.callbacks import IDEMPOTENCY_HEADER, Delivery, deliver, signing_problem
from voicevault.operator.signature import SIGNATURE_HEADER, verify_twilio_signature

KEY = "auth-token-123456"
PARAMS = {
    "AccountSid": "AC" + "0123456789abcdef" * 2,
    "RecordingSid": "RE" + "a" * 32,
    "RecordingStatus": "completed",
    "RecordingUrl": "https://rec.s3.us-east-1.amazonaws.com/calls/AC/RE.wav",
    "ErrorCode": "0",
}


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    server = CallbackReceiver().start()
    yield server
    server.stop()


def _deliver(url: str, attempts: int = 4, signing_key: str | None = KEY) -> Delivery:
    return asyncio.run(
        deliver(url, PARAMS, signing_key, attempts=attempts, timeout=5, first_delay=0.01)
    )


def _all_signed(receiver: CallbackReceiver, url: str) -> bool:
    return all(
        r.params == PARAMS
        and verify_twilio_signature(KEY, url, r.params, r.headers[SIGNATURE_HEADER])
        for r in receiver.received
    )


def test_a_server_error_is_retried_until_delivered(receiver: CallbackReceiver) -> None:
    receiver.script = [500, 503]
    url = receiver.url("/hooks/status?tenant=acme")  # the query is part of what is signed
    result = _deliver(url)
    assert result == Delivery(True, 3, "HTTP 200")
    assert len(receiver.received) == 3
    assert [r.path for r in receiver.received] == ["/hooks/status?tenant=acme"] * 3
    assert _all_signed(receiver, url), "every attempt carries the same valid signature"


def test_a_receiver_that_always_fails_is_given_up_on(receiver: CallbackReceiver) -> None:
    receiver.status = 500
    result = _deliver(receiver.url(), attempts=3)
    assert result == Delivery(False, 3, "HTTP 500")
    assert len(receiver.received) == 3, "bounded: no attempt beyond the limit"
    assert _all_signed(receiver, receiver.url())


@pytest.mark.parametrize("status", [400, 401, 404, 410])
def test_a_client_error_is_final_at_once(receiver: CallbackReceiver, status: int) -> None:
    receiver.status = status
    result = _deliver(receiver.url())
    assert result == Delivery(False, 1, f"HTTP {status}")
    assert len(receiver.received) == 1


@pytest.mark.parametrize("status", [429, 408])
def test_too_many_requests_and_timeouts_are_retried(
    receiver: CallbackReceiver, status: int
) -> None:
    receiver.script = [status, status]
    result = _deliver(receiver.url())
    assert result == Delivery(True, 3, "HTTP 200")
    assert len(receiver.received) == 3


def test_without_a_signing_key_nothing_is_signed(receiver: CallbackReceiver) -> None:
    result = _deliver(receiver.url(), signing_key=None)
    assert result.delivered and result.attempts == 1
    assert SIGNATURE_HEADER not in receiver.received[0].headers
    assert receiver.received[0].params == PARAMS


def test_nobody_listening_is_retried_then_reported() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = _deliver(f"http://127.0.0.1:{port}/callbacks", attempts=2)
    assert not result.delivered and result.attempts == 2
    assert result.detail.startswith("Client"), result.detail


def test_every_attempt_carries_the_same_idempotency_token(receiver: CallbackReceiver) -> None:
    receiver.script = [500, 429]
    token = "RE" + "a" * 32 + "-completed-0123456789abcdef"
    result = asyncio.run(
        deliver(receiver.url(), PARAMS, KEY, attempts=4, first_delay=0.01, idempotency_token=token)
    )
    assert result.delivered and result.attempts == 3
    assert [r.headers.get(IDEMPOTENCY_HEADER) for r in receiver.received] == [token] * 3


def test_a_signing_key_problem_names_what_is_missing() -> None:
    assert signing_problem("acme", "keys", "authToken", None) == (
        "SigningSecretNotFound",
        "signing Secret 'keys' not found in 'acme'",
    )
    reason, message = signing_problem("acme", "keys", "authToken", {"other": b"x"}) or ("", "")
    assert reason == "SigningKeyMissing" and "'authToken'" in message
    assert signing_problem("acme", "keys", "authToken", {"authToken": b" \n"}) is not None
    assert signing_problem("acme", "keys", "authToken", {"authToken": b"k"}) is None
