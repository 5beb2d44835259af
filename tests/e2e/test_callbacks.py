"""Status callbacks through the whole loop when the receiver fails, and for a failure."""

from __future__ import annotations

import os

import pytest

from tests.bed.stack import Stack
from tests.support.callbacks import CallbackReceiver
from tests.support.invariants import wait_metrics_moved
from tests.support.kube import wait_for
from voicevault.operator.config import OperatorConfig
from voicevault.operator.signature import verify_twilio_signature

pytestmark = [pytest.mark.kube, pytest.mark.s3, pytest.mark.slow]
KEY = "auth-token-" + "7" * 16


def test_a_failing_receiver_does_not_hold_back_the_recording(
    live_stack: Stack, callbacks: CallbackReceiver
) -> None:
    callbacks.status = 500
    account = live_stack.add_account(callback_url=callbacks.url(), signing_key=KEY)
    before = live_stack.operator.metrics()
    live_stack.record(account, "unheard", os.urandom(5000))
    status = live_stack.wait_phase(account.namespace, "unheard", "Completed", "Failed")["status"]
    assert status["phase"] == "Completed", status
    assert live_stack.object_bytes(account, status["storage"]["objectKey"])

    attempts = OperatorConfig().callback_attempts  # the operator runs with the default
    body = live_stack.wait_condition(
        account.namespace,
        "recordings",
        "unheard",
        "CallbackDelivered",
        status="False",
        reason="DeliveryFailed",
    )
    cond = next(c for c in body["status"]["conditions"] if c["type"] == "CallbackDelivered")
    assert cond["message"] == f"HTTP 500 after {attempts} attempt(s) to {callbacks.url()}"
    assert body["status"]["callbackAttempts"] == attempts
    assert body["status"]["phase"] == "Completed", "a callback failure changes no phase"
    calls = callbacks.for_recording(status["sid"])
    assert len(calls) == attempts, "bounded retries, then it gives up"
    assert all(c.params["RecordingStatus"] == "completed" for c in calls)
    live_stack.wait_event_reasons(account.namespace, "CallbackDeliveryFailed")
    wait_metrics_moved(
        live_stack, before, [("voicevault_callbacks_total", {"result": "failed"}, 1)]
    )


def test_a_failed_recording_is_called_back_as_failed_with_its_error_code(
    live_stack: Stack, callbacks: CallbackReceiver
) -> None:
    account = live_stack.add_account(
        secret_access_key="not-the-right-secret-at-all-0000000000",
        callback_url=callbacks.url(),
        signing_key=KEY,
    )
    live_stack.record(account, "refused", os.urandom(2000))
    status = live_stack.wait_phase(account.namespace, "refused", "Failed", "Completed")["status"]
    assert status["phase"] == "Failed", status
    live_stack.wait_condition(account.namespace, "recordings", "refused", "CallbackDelivered")

    calls = wait_for(lambda: callbacks.for_recording(status["sid"]), what="the failure callback")
    assert len(calls) == 1
    params = calls[0].params
    assert params["RecordingStatus"] == "failed"
    assert params["ErrorCode"] == str(status["errorCode"]) == "16112"
    assert params["RecordingUrl"] == "", "nothing was stored, so there is no URL"
    assert verify_twilio_signature(
        KEY, callbacks.url(), params, calls[0].headers["X-Twilio-Signature"]
    )
