"""Lifecycle rules through the real loop: settings snapshots, deletion, tenancy."""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest
from kubernetes import client as k8s

from tests.bed.faultproxy import Delay, FaultProxy, Respond, Rule
from tests.bed.stack import Stack
from tests.support.kube import wait_for
from voicevault import API_GROUP, API_VERSION

pytestmark = [pytest.mark.kube, pytest.mark.s3, pytest.mark.slow]
MIB = 1 << 20


def _patch_setting(stack: Stack, namespace: str, spec: dict[str, object]) -> None:
    stack.custom.patch_namespaced_custom_object(
        API_GROUP, API_VERSION, namespace, "voicestoragesettings", "default", {"spec": spec}
    )


def _wait_gone(stack: Stack, namespace: str, name: str) -> None:
    def gone() -> bool:
        try:
            stack.get(namespace, "recordings", name)
        except k8s.ApiException as exc:
            return bool(exc.status == 404)
        return False

    wait_for(gone, timeout=90, what=f"Recording {name} to be deleted")


def test_a_setting_change_applies_only_to_recordings_created_after_it(
    live_stack: Stack, proxy: FaultProxy
) -> None:
    account = live_stack.add_account(endpoint=proxy.url)
    # hold uploads back so the first recording is still in flight when the setting changes
    proxy.add_rule(Rule(action=Respond(503, "SlowDown", "wait")))
    live_stack.record(account, "before", os.urandom(4000))
    before = live_stack.wait_phase(account.namespace, "before", "Retrying", timeout=60)["status"]
    assert account.keys is None
    from tests.support.keys import key_pair

    _patch_setting(
        live_stack,
        account.namespace,
        {
            "externalStorage": {"objectKeyTemplate": "v2/{recordingSid}{ext}"},
            "encryption": {"publicKey": key_pair().public_pem.decode()},
        },
    )

    def setting_applied() -> bool:
        body = live_stack.get(account.namespace, "voicestoragesettings", "default")
        return bool(body["status"].get("observedGeneration") == body["metadata"]["generation"] == 2)

    wait_for(setting_applied, what="the new setting generation to be observed")
    live_stack.record(account, "after", os.urandom(4000))
    proxy.clear_rules()
    old = live_stack.wait_phase(account.namespace, "before", "Completed", timeout=60)["status"]
    new = live_stack.wait_phase(account.namespace, "after", "Completed", timeout=60)["status"]
    assert old["storage"]["objectKey"] == before["storage"]["objectKey"]
    assert old["storage"]["objectKey"].startswith("calls/AC") and "encryptionDetails" not in old
    assert old["storage"]["settingGeneration"] == 1
    assert new["storage"]["objectKey"] == f"calls/v2/{new['sid']}.wav"
    assert (
        new["encryptionDetails"]["type"] == "rsa-aes" and new["storage"]["settingGeneration"] == 2
    )
    assert len(live_stack.object_bytes(account, old["storage"]["objectKey"])) == 4000
    assert len(live_stack.object_bytes(account, new["storage"]["objectKey"])) == 4016


def test_deleting_a_recording_mid_upload_leaves_no_upload_and_no_file(
    live_stack: Stack, proxy: FaultProxy
) -> None:
    # a long backoff keeps it Retrying (not re-scheduled) while it is deleted
    account = live_stack.add_account(
        endpoint=proxy.url,
        retry={"windowSeconds": 7200, "initialBackoffSeconds": 600, "maxBackoffSeconds": 600},
    )
    # two parts arrive, the rest fail: the upload stays open with parts in the bucket
    proxy.add_rule(
        Rule(
            action=Respond(503, "SlowDown", "wait"),
            method="PUT",
            query_contains="partNumber",
            after=2,
        )
    )
    live_stack.record(account, "doomed", os.urandom(40 * MIB))
    media = live_stack.media_file("node-a", account.namespace, "2026/11/doomed.wav")
    live_stack.wait_phase(account.namespace, "doomed", "Retrying", timeout=120)
    assert live_stack.open_uploads(account), "a multipart upload is open with parts in it"
    assert media.exists()
    proxy.clear_rules()

    live_stack.delete(account.namespace, "recordings", "doomed")

    _wait_gone(live_stack, account.namespace, "doomed")
    assert not media.exists(), "local media removed before the resource went"
    assert live_stack.open_uploads(account) == [], "the multipart upload was aborted"


def test_a_recording_queued_behind_a_busy_pod_has_no_phase_yet_and_deleting_it_purges(
    live_stack: Stack, proxy: FaultProxy
) -> None:
    """Being queued costs the finalizer write alone; the media is still the operator's to
    remove when the Recording is deleted before any pod took it."""
    account = live_stack.add_account(endpoint=proxy.url)
    # the first recording's PUT is held, so its pod keeps node-a busy meanwhile
    hold = Rule(action=Delay(30.0), method="PUT", times=1)  # the first upload only
    proxy.add_rule(hold)
    live_stack.record(account, "hold", os.urandom(3000))
    wait_for(lambda: hold.matched >= 1, timeout=60, what="the first upload to be under way")
    live_stack.record(account, "queued", os.urandom(3000))
    media = live_stack.media_file("node-a", account.namespace, "2026/11/queued.wav")

    def queued() -> dict[str, Any] | None:
        body = live_stack.get(account.namespace, "recordings", "queued")
        return body if body["metadata"].get("finalizers") else None

    body = wait_for(queued, timeout=30, what="the operator to take the second recording")
    assert not (body.get("status") or {}).get("phase"), body.get("status")
    assert hold.applied == 1 and media.exists()
    live_stack.delete(account.namespace, "recordings", "queued")

    _wait_gone(live_stack, account.namespace, "queued")
    assert not media.exists(), "its media was removed before the resource went"
    done = live_stack.wait_phase(account.namespace, "hold", "Completed", timeout=60)["status"]
    assert done["attempts"] == 1


def test_a_tenant_cannot_use_another_namespaces_secret_or_credential(live_stack: Stack) -> None:
    victim = live_stack.add_account()
    attacker = live_stack.add_account()
    live_stack.create(
        attacker.namespace,
        "awscredentials",
        {
            "metadata": {"name": "stolen"},
            "spec": {"secretRef": {"name": "s3-writer-keys", "namespace": victim.namespace}},
        },
    )
    body = live_stack.wait_condition(
        attacker.namespace,
        "awscredentials",
        "stolen",
        "Ready",
        status="False",
        reason="CrossNamespaceReference",
    )
    assert "accessKeyIdSuffix" not in body["status"], "nothing of the other Secret was read"
    # a credential named like the victim's, but referenced across namespaces from a setting
    live_stack.custom.patch_namespaced_custom_object(
        API_GROUP,
        API_VERSION,
        attacker.namespace,
        "voicestoragesettings",
        "default",
        {
            "spec": {
                "externalStorage": {
                    "credentialRef": {"name": "s3-writer", "namespace": victim.namespace}
                }
            }
        },
    )
    setting = live_stack.wait_condition(
        attacker.namespace,
        "voicestoragesettings",
        "default",
        "Ready",
        status="False",
        reason="CrossNamespaceReference",
    )
    ready = next(c for c in setting["status"]["conditions"] if c["type"] == "Ready")
    assert victim.namespace in ready["message"] or "own namespace" in ready["message"]


def test_recording_in_a_namespace_without_setting_stays_local(live_stack: Stack) -> None:
    namespace = "no-setting-" + base64.b32encode(os.urandom(5)).decode().lower()
    live_stack.core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace)))
    from tests.bed.stack import Account

    account = Account(namespace, None, None)  # type: ignore[arg-type]
    live_stack.record(account, "kept", b"RIFF....")
    status = live_stack.wait_phase(namespace, "kept", "Local", timeout=30)["status"]
    assert "no VoiceStorageSetting" in status["message"]
    assert live_stack.media_file("node-a", namespace, "2026/11/kept.wav").exists()
