"""Transient faults end Cached with the media kept (then a manual retry works); fatal
errors end Failed with the media deleted and no retries."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.bed.faultproxy import FaultProxy, Respond, Rule
from tests.bed.stack import Stack
from tests.support.invariants import metric, samples, wait_metrics_moved
from tests.support.kube import wait_for

pytestmark = [pytest.mark.kube, pytest.mark.s3, pytest.mark.slow]
SHORT_WINDOW = {"windowSeconds": 6, "initialBackoffSeconds": 1, "maxBackoffSeconds": 2}


def test_slowdown_past_the_window_caches_then_manual_retry_completes(
    live_stack: Stack, proxy: FaultProxy
) -> None:
    account = live_stack.add_account(endpoint=proxy.url, retry=SHORT_WINDOW)
    proxy.add_rule(Rule(action=Respond(503, "SlowDown", "Please reduce your request rate.")))
    before = live_stack.operator.metrics()
    live_stack.record(account, "busy", os.urandom(50_000))
    media = live_stack.media_file("node-a", account.namespace, "2026/11/busy.wav")

    cached = live_stack.wait_phase(account.namespace, "busy", "Cached", timeout=60)["status"]
    assert media.exists(), "Cached means the media is still on its node"
    assert cached["errorCode"] == 16111 and cached["errorClass"] == "Transient"
    assert "SlowDown" in cached["errorMessage"]
    assert cached["attempts"] >= 2, "it was retried inside the window"
    live_stack.wait_event_reasons(account.namespace, "UploadFailed", "Cached")
    # every attempt failed transiently; all but the last scheduled a retry
    while_cached = wait_metrics_moved(
        live_stack,
        before,
        [
            ("voicevault_uploads_total", {"result": "transient"}, cached["attempts"]),
            ("voicevault_retries_total", {}, cached["attempts"] - 1),
            ("voicevault_cached_total", {}, 1),
            ("voicevault_cached_recordings", {}, 1),
        ],
    )
    assert metric(while_cached, "voicevault_cached_recordings") >= 1

    proxy.clear_rules()
    retry = subprocess.run(
        [
            sys.executable,
            "-m",
            "voicevault",
            "retry",
            "busy",
            "-n",
            account.namespace,
            "--kubeconfig",
            str(live_stack.cp.admin_kubeconfig),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert retry.returncode == 0, retry.stderr
    done = live_stack.wait_phase(account.namespace, "busy", "Completed", timeout=60)["status"]
    # the uploader writes Completed, then deletes the media
    wait_for(lambda: not media.exists(), timeout=15, what="the media to be deleted")
    assert "errorCode" not in done, "a stale error is cleared on success"
    live_stack.wait_event_reasons(account.namespace, "ManualRetry")
    wait_metrics_moved(
        live_stack,
        while_cached,
        [
            ("voicevault_cached_recordings", {}, -1),
            ("voicevault_uploads_total", {"result": "completed"}, 1),
            ("voicevault_recordings", {"phase": "Completed"}, 1),
        ],
    )


def test_retry_all_cached(live_stack: Stack, proxy: FaultProxy) -> None:
    account = live_stack.add_account(endpoint=proxy.url, retry=SHORT_WINDOW)
    proxy.add_rule(Rule(action=Respond(500, "InternalError", "oops")))
    for name in ("one", "two"):
        live_stack.record(account, name, os.urandom(1000))
    for name in ("one", "two"):
        live_stack.wait_phase(account.namespace, name, "Cached", timeout=60)
    proxy.clear_rules()
    retry = subprocess.run(
        [
            sys.executable,
            "-m",
            "voicevault",
            "retry",
            "--all-cached",
            "-n",
            account.namespace,
            "--kubeconfig",
            str(live_stack.cp.admin_kubeconfig),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert retry.returncode == 0, retry.stderr
    assert retry.stdout.count("retry requested") == 2
    for name in ("one", "two"):
        live_stack.wait_phase(account.namespace, name, "Completed", timeout=60)


def test_wrong_credentials_fail_at_once_and_delete_the_media(live_stack: Stack) -> None:
    account = live_stack.add_account(secret_access_key="not-the-right-secret-at-all-0000000000")
    live_stack.wait_condition(
        account.namespace, "voicestoragesettings", "default", "Validated", status="False"
    )
    before = live_stack.operator.metrics()
    live_stack.record(account, "denied", os.urandom(2000))
    media = live_stack.media_file("node-a", account.namespace, "2026/11/denied.wav")
    status = live_stack.wait_phase(account.namespace, "denied", "Failed", "Completed", timeout=60)[
        "status"
    ]
    assert status["phase"] == "Failed"
    assert status["errorCode"] == 16112 and status["errorClass"] == "Fatal"
    assert status["attempts"] == 1, "no retries after a fatal error"
    assert not media.exists(), "fatal: the media is deleted immediately"
    assert "nextRetryTime" not in status
    after = wait_metrics_moved(
        live_stack,
        before,
        [
            ("voicevault_uploads_total", {"result": "fatal"}, 1),
            ("voicevault_recordings", {"phase": "Failed"}, 1),
        ],
    )
    assert samples(after, "voicevault_storage_setting_valid", namespace=account.namespace) == [0]


def test_bad_public_key_in_the_setting_is_reported_before_anything_is_uploaded(
    live_stack: Stack,
) -> None:
    account = live_stack.add_account(wait_ready=False)
    live_stack.custom.patch_namespaced_custom_object(
        "voicevault.io",
        "v1alpha1",
        account.namespace,
        "voicestoragesettings",
        "default",
        {
            "spec": {
                "encryption": {
                    "publicKey": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
                }
            }
        },
    )
    body = live_stack.wait_condition(
        account.namespace,
        "voicestoragesettings",
        "default",
        "Ready",
        status="False",
        reason="InvalidPublicKey",
    )
    ready = next(c for c in body["status"]["conditions"] if c["type"] == "Ready")
    assert "key" in ready["message"].lower()
    assert ready["observedGeneration"] == body["metadata"]["generation"]

    def counted_invalid() -> bool:
        text = live_stack.operator.metrics()
        return samples(text, "voicevault_storage_setting_valid", namespace=account.namespace) == [0]

    wait_for(counted_invalid, timeout=15, what="the setting to be counted invalid")
