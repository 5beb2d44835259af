"""Transient faults end Cached with the media kept (then a manual retry works); fatal
errors end Failed with the media deleted and no retries."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import uuid
from typing import Any

import pytest
from kubernetes import client as k8s

from tests.bed.faultproxy import FaultProxy, Respond, Rule
from tests.bed.stack import Account, Stack
from tests.support.invariants import metric, samples, wait_metrics_moved
from tests.support.kube import wait_for
from voicevault import API_GROUP, API_VERSION

pytestmark = [pytest.mark.kube, pytest.mark.s3, pytest.mark.slow]
SHORT_WINDOW = {"windowSeconds": 6, "initialBackoffSeconds": 1, "maxBackoffSeconds": 2}
TERMINAL = ("Completed", "Failed", "Cached", "Local")


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


def _secret_key(stack: Stack, namespace: str, value: str) -> None:
    stack.core.patch_namespaced_secret(
        "s3-writer-keys",
        namespace,
        {"data": {"AWS_SECRET_ACCESS_KEY": base64.b64encode(value.encode()).decode()}},
    )


def _refuse(stack: Stack, account: Account, how: str) -> bool:
    """Break the account's validated configuration the way a person might; False if the
    apiserver refused the change outright."""
    if how == "wrong-secret-key":
        _secret_key(stack, account.namespace, "not-the-right-secret-at-all-0000000000")
        return True
    spec: dict[str, Any] = (
        {"externalStorage": {"bucketUrl": _url_of(account, f"gone-{uuid.uuid4().hex[:8]}")}}
        if how == "no-such-bucket"
        else {
            "encryption": {
                "publicKey": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
            }
        }
    )
    try:
        stack.custom.patch_namespaced_custom_object(
            API_GROUP,
            API_VERSION,
            account.namespace,
            "voicestoragesettings",
            "default",
            {"spec": spec},
        )
    except k8s.ApiException as exc:
        # refused at apply time (the admission webhook): nothing can ever upload with it
        if how != "unusable-public-key" or exc.status not in (400, 403, 422):
            raise
        return False
    return True


def _url_of(account: Account, bucket: str) -> str:
    return f"https://{bucket}.s3.{account.s3.region}.amazonaws.com/{account.s3.prefix}"


@pytest.mark.parametrize(
    ("how", "reasons"),
    [
        pytest.param("wrong-secret-key", {"AccessDenied"}, id="16112-access-denied"),
        # with IAM enforced, a bucket outside the policy may answer AccessDenied first
        pytest.param("no-such-bucket", {"NoSuchBucket", "AccessDenied"}, id="16111-no-bucket"),
        pytest.param("unusable-public-key", {"InvalidPublicKey"}, id="16104-public-key"),
    ],
)
def test_a_configuration_refused_before_any_upload_keeps_the_media_and_ends_cached(
    live_stack: Stack, how: str, reasons: set[str]
) -> None:
    account = live_stack.add_account(retry=SHORT_WINDOW)
    if not _refuse(live_stack, account, how):
        return
    setting = wait_for(
        lambda: _ready_reason(live_stack, account.namespace, reasons),
        timeout=20,
        what=f"the setting to be refused for {reasons}",
    )
    assert setting["status"] == "False", setting
    live_stack.record(account, "held", os.urandom(2000))
    media = live_stack.media_file("node-a", account.namespace, "2026/11/held.wav")
    waiting = live_stack.wait_phase(account.namespace, "held", "Pending", *TERMINAL)["status"]
    assert waiting["phase"] == "Pending", waiting
    assert setting["reason"] in waiting["message"], waiting
    cached = live_stack.wait_phase(account.namespace, "held", *TERMINAL, timeout=60)["status"]
    assert cached["phase"] == "Cached", "a configuration known broken deletes nothing"
    assert media.exists(), "the media is kept on its node"
    assert not cached.get("errorCode"), "nothing was attempted"
    assert not cached.get("storage"), "it never got a snapshot of the refused setting"
    assert cached.get("attempts", 0) == 0 and not cached.get("upload"), "no uploader had it"
    assert _bucket_keys(live_stack, account) == []


def test_a_fixed_secret_takes_effect_in_seconds_and_held_recordings_complete(
    live_stack: Stack,
) -> None:
    account = live_stack.add_account()
    _secret_key(live_stack, account.namespace, "not-the-right-secret-at-all-0000000000")
    # no change to the setting or the credential: the Secret alone is validated again
    live_stack.wait_condition(
        account.namespace,
        "voicestoragesettings",
        "default",
        "Ready",
        status="False",
        reason="AccessDenied",
        timeout=15,
    )
    data = os.urandom(3000)
    live_stack.record(account, "waits", data)
    media = live_stack.media_file("node-a", account.namespace, "2026/11/waits.wav")
    live_stack.wait_phase(account.namespace, "waits", "Pending")
    _secret_key(live_stack, account.namespace, account.s3.secret_access_key)
    live_stack.wait_condition(
        account.namespace, "voicestoragesettings", "default", "Ready", timeout=15
    )
    done = live_stack.wait_phase(account.namespace, "waits", *TERMINAL, timeout=60)["status"]
    assert done["phase"] == "Completed", done
    assert live_stack.object_bytes(account, done["storage"]["objectKey"]) == data
    wait_for(lambda: not media.exists(), timeout=15, what="the media to be deleted")


def test_a_recording_queued_before_the_bucket_refused_its_keys_waits_instead_of_failing(
    live_stack: Stack, proxy: FaultProxy
) -> None:
    retry = {"windowSeconds": 300, "initialBackoffSeconds": 2, "maxBackoffSeconds": 2}
    account = live_stack.add_account(endpoint=proxy.url, retry=retry)
    proxy.add_rule(Rule(action=Respond(503, "SlowDown", "wait"), method="PUT"))
    data = os.urandom(4000)
    live_stack.record(account, "queued", data)
    media = live_stack.media_file("node-a", account.namespace, "2026/11/queued.wav")
    live_stack.wait_phase(account.namespace, "queued", "Retrying")
    _secret_key(live_stack, account.namespace, "not-the-right-secret-at-all-0000000000")
    live_stack.wait_condition(
        account.namespace,
        "voicestoragesettings",
        "default",
        "Ready",
        status="False",
        reason="AccessDenied",
        timeout=15,
    )
    proxy.clear_rules()

    def held() -> dict[str, Any] | None:
        status = live_stack.get(account.namespace, "recordings", "queued")["status"]
        assert status["phase"] != "Failed", f"uploaded into a known refusal: {status}"
        return status if "AccessDenied" in status.get("message", "") else None

    status = wait_for(held, timeout=30, what="the queued recording to wait for the setting")
    assert status["phase"] == "Pending" and media.exists(), status
    _secret_key(live_stack, account.namespace, account.s3.secret_access_key)
    done = live_stack.wait_phase(account.namespace, "queued", *TERMINAL, timeout=60)["status"]
    assert done["phase"] == "Completed", done
    assert live_stack.object_bytes(account, done["storage"]["objectKey"]) == data


def test_access_denied_during_an_upload_of_a_working_configuration_is_fatal(
    live_stack: Stack,
) -> None:
    """The seed's rule: once the configuration has worked, access denied is fatal."""
    account = live_stack.add_account()
    live_stack.wait_condition(account.namespace, "voicestoragesettings", "default", "Validated")
    live_stack.s3.revoke(account.s3)  # type: ignore[attr-defined]
    before = live_stack.operator.metrics()
    live_stack.record(account, "denied", os.urandom(2000))
    media = live_stack.media_file("node-a", account.namespace, "2026/11/denied.wav")
    status = live_stack.wait_phase(account.namespace, "denied", *TERMINAL, timeout=60)["status"]
    assert status["phase"] == "Failed"
    assert status["errorCode"] == 16112 and status["errorClass"] == "Fatal"
    assert status["attempts"] == 1, "no retries after a fatal error"
    assert not media.exists(), "fatal: the media is deleted immediately"
    assert "nextRetryTime" not in status
    wait_metrics_moved(
        live_stack,
        before,
        [
            ("voicevault_uploads_total", {"result": "fatal"}, 1),
            ("voicevault_recordings", {"phase": "Failed"}, 1),
        ],
    )


def _ready_reason(stack: Stack, namespace: str, reasons: set[str]) -> dict[str, Any] | None:
    body = stack.get(namespace, "voicestoragesettings", "default")
    for cond in (body.get("status") or {}).get("conditions") or []:
        if cond["type"] == "Ready" and cond.get("reason") in reasons:
            return dict(cond)
    return None


def _bucket_keys(stack: Stack, account: Account) -> list[str]:
    page = stack.s3.admin_client().list_objects_v2(Bucket=account.s3.bucket)
    return [str(o["Key"]) for o in page.get("Contents", [])]


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
