"""Status callbacks through the whole loop when the receiver fails, and for a failure."""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest
from kubernetes import client as k8s

from tests.bed.stack import ACCOUNT_SID, Stack
from tests.support.callbacks import CallbackReceiver
from tests.support.invariants import wait_metrics_moved
from tests.support.kube import wait_for
from voicevault import API_GROUP, API_VERSION
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
    account = live_stack.add_account(callback_url=callbacks.url(), signing_key=KEY)
    _recording_without_media(live_stack, account.namespace, "missing")
    status = live_stack.wait_phase(account.namespace, "missing", "Failed", "Completed")["status"]
    assert status["phase"] == "Failed", status
    live_stack.wait_condition(account.namespace, "recordings", "missing", "CallbackDelivered")

    calls = wait_for(lambda: callbacks.for_recording(status["sid"]), what="the failure callback")
    assert len(calls) == 1
    params = calls[0].params
    assert params["RecordingStatus"] == "failed"
    assert params["ErrorCode"] == str(status["errorCode"]) == "16111"
    assert params["RecordingUrl"] == "", "nothing was stored, so there is no URL"
    assert verify_twilio_signature(
        KEY, callbacks.url(), params, calls[0].headers["X-Twilio-Signature"]
    )
    token = calls[0].headers["I-Twilio-Idempotency-Token"]
    assert token.startswith(f"{status['sid']}-failed-")


def _recording_without_media(stack: Stack, namespace: str, name: str) -> None:
    spec = {
        "accountSid": ACCOUNT_SID,
        "callSid": "CA" + "0" * 32,
        "source": "StartCallRecordingAPI",
        "startTime": "2026-11-25T10:00:00Z",
        "duration": 7,
        "nodeName": stack.nodes[0],
        "mediaPath": f"2026/11/{name}.wav",
    }
    stack.create(namespace, "recordings", {"metadata": {"name": name}, "spec": spec})


def _signing_condition(stack: Stack, namespace: str) -> dict[str, Any] | None:
    body = stack.get(namespace, "voicestoragesettings", "default")
    found = [c for c in body["status"].get("conditions", []) if c["type"] == "CallbackSigning"]
    return found[0] if found else None


def _signing_secret(stack: Stack, namespace: str, data: dict[str, str]) -> None:
    secret = k8s.V1Secret(
        metadata=k8s.V1ObjectMeta(name="callback-keys"),
        data={k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    )
    try:
        stack.core.create_namespaced_secret(namespace, secret)
    except k8s.ApiException as exc:
        if exc.status != 409:
            raise
        stack.core.replace_namespaced_secret("callback-keys", namespace, secret)


def test_a_signing_key_that_cannot_be_read_says_why_on_the_setting_and_each_recording(
    live_stack: Stack, callbacks: CallbackReceiver
) -> None:
    account = live_stack.add_account(callback_url=callbacks.url())
    live_stack.custom.patch_namespaced_custom_object(
        API_GROUP,
        API_VERSION,
        account.namespace,
        "voicestoragesettings",
        "default",
        {"spec": {"statusCallback": {"signingKeyRef": {"name": "callback-keys", "key": "token"}}}},
    )

    def reason_is(reason: str) -> dict[str, Any] | None:
        found = _signing_condition(live_stack, account.namespace)
        return found if found and found["reason"] == reason else None

    missing = wait_for(lambda: reason_is("SigningSecretNotFound"), what="the Secret missing")
    assert missing["status"] == "False"
    assert "'callback-keys' not found" in missing["message"], missing
    setting = live_stack.get(account.namespace, "voicestoragesettings", "default")
    ready = next(c for c in setting["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True", "uploads still work; only the callbacks cannot be signed"
    live_stack.wait_event_reasons(account.namespace, "SigningSecretNotFound")

    live_stack.record(account, "unsigned", os.urandom(1000))
    body = live_stack.wait_condition(
        account.namespace,
        "recordings",
        "unsigned",
        "CallbackDelivered",
        status="False",
        reason="SigningSecretNotFound",
    )
    assert body["status"]["phase"] == "Completed"
    cond = next(c for c in body["status"]["conditions"] if c["type"] == "CallbackDelivered")
    assert "not found" in cond["message"] and "callback not sent" in cond["message"], cond
    assert callbacks.for_recording(body["status"]["sid"]) == [], "nothing sent unsigned"

    # the Secret appears, without the key: the operator notices the Secret itself
    _signing_secret(live_stack, account.namespace, {"other": "x"})
    no_key = wait_for(lambda: reason_is("SigningKeyMissing"), timeout=15, what="key missing")
    assert "'token'" in no_key["message"], no_key
    live_stack.record(account, "keyless", os.urandom(1000))
    live_stack.wait_condition(
        account.namespace,
        "recordings",
        "keyless",
        "CallbackDelivered",
        status="False",
        reason="SigningKeyMissing",
    )

    _signing_secret(live_stack, account.namespace, {"token": KEY})
    wait_for(lambda: reason_is("SigningKeyFound"), timeout=15, what="the key found")
    live_stack.record(account, "signed", os.urandom(1000))
    done = live_stack.wait_condition(account.namespace, "recordings", "signed", "CallbackDelivered")
    calls = callbacks.for_recording(done["status"]["sid"])
    assert len(calls) == 1
    assert verify_twilio_signature(
        KEY, callbacks.url(), calls[0].params, calls[0].headers["X-Twilio-Signature"]
    )
