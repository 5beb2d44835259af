"""The metadata document through the real loop (apiserver, operator, uploader pods, S3):
written beside the media when the setting asks, its URL in the status and the callback,
pending while its PUT fails, and written once across an uploader killed between the PUTs."""

from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Any

import pytest

from tests.bed.faultproxy import Blackhole, FaultProxy, Respond, Rule
from tests.bed.kubelet import kill_leftovers
from tests.bed.stack import Account, Stack
from tests.support.callbacks import CallbackReceiver, Received
from tests.support.kube import wait_for
from tests.unit.test_metadata_document import assert_valid
from voicevault import API_GROUP, API_VERSION
from voicevault.uploader import envelope

pytestmark = [pytest.mark.kube, pytest.mark.s3, pytest.mark.slow]
MIB = 1 << 20
JSON_PUT = r"\.json$"


def _document(stack: Stack, account: Account, status: dict[str, Any]) -> dict[str, Any]:
    """The stored document, valid, and true about the object stored beside it."""
    key = status["storage"]["objectKey"]
    assert status["storage"]["metadataKey"] == key + ".json"
    document: dict[str, Any] = json.loads(stack.object_bytes(account, key + ".json"))
    assert_valid(document)
    stored = stack.object_bytes(account, key)
    assert document["media"]["sha256"] == hashlib.sha256(stored).hexdigest()
    assert document["media"]["size"] == len(stored)
    assert document["media"]["url"] == status["mediaUrl"]
    assert document["recording_sid"] == status["sid"]
    return document


def _metadata_condition(status: dict[str, Any]) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c["type"] == "MetadataStored"), None)


def _json_puts(proxy: FaultProxy, *, forwarded: bool = True) -> int:
    return sum(
        1
        for r in proxy.requests
        if r.method == "PUT" and r.path.endswith(".json") and (r.fault is None or not forwarded)
    )


def _has_object(stack: Stack, account: Account, key: str) -> bool:
    listed = stack.s3.admin_client().list_objects_v2(Bucket=account.s3.bucket, Prefix=key)
    return any(o["Key"] == key for o in listed.get("Contents", []))


def test_document_beside_the_media_with_its_url_in_status_and_callback(
    live_stack: Stack, callbacks: CallbackReceiver
) -> None:
    account = live_stack.add_account(encrypted=True, callback_url=callbacks.url(), metadata=True)
    data = os.urandom(200_000)
    live_stack.record(account, "call-1", data)
    body = live_stack.wait_phase(account.namespace, "call-1", "Completed", "Failed", timeout=90)
    status = body["status"]
    assert status["phase"] == "Completed", status
    assert status["metadataUrl"] == status["mediaUrl"] + ".json"
    condition = _metadata_condition(status)
    assert condition is not None and condition["status"] == "True"
    document = _document(live_stack, account, status)
    spec = body["spec"]
    assert (document["call_sid"], document["duration"]) == (spec["callSid"], spec["duration"])
    assert (
        document["encryption_details"]
        == envelope.EncryptionDetails.from_mapping(status["encryptionDetails"]).to_twilio()
    )
    assert account.keys is not None
    content_key = envelope.open_content_key(
        account.keys.private_pem,
        envelope.EncryptionDetails.from_mapping(document["encryption_details"]),
    )
    stored = live_stack.object_bytes(account, status["storage"]["objectKey"])
    out = io.BytesIO()
    envelope.decrypt_stream(content_key, io.BytesIO(stored), out, len(stored))
    assert out.getvalue() == data, "the document opens the object"

    def delivered() -> list[Received]:
        return callbacks.for_recording(status["sid"])

    call = wait_for(delivered, timeout=30, what="the status callback")[0]
    assert call.params["RecordingMetadataUrl"] == status["metadataUrl"]

    # turned off, it applies to recordings created afterwards only
    live_stack.custom.patch_namespaced_custom_object(
        API_GROUP,
        API_VERSION,
        account.namespace,
        "voicestoragesettings",
        "default",
        {"spec": {"metadataObject": {"enabled": False}}},
    )

    def setting_seen() -> bool:
        setting = live_stack.get(account.namespace, "voicestoragesettings", "default")
        generation = setting["metadata"]["generation"]
        return bool((setting.get("status") or {}).get("observedGeneration") == generation)

    wait_for(setting_seen, timeout=30, what="the operator to see the changed setting")
    live_stack.record(account, "call-2", os.urandom(1000))
    later = live_stack.wait_phase(account.namespace, "call-2", "Completed", timeout=90)["status"]
    assert "metadataUrl" not in later and "metadataKey" not in later["storage"]
    assert not _has_object(live_stack, account, later["storage"]["objectKey"] + ".json")
    assert _has_object(live_stack, account, status["storage"]["objectKey"] + ".json")


def test_a_failing_document_put_leaves_media_url_and_a_pending_condition(
    live_stack: Stack, proxy: FaultProxy
) -> None:
    account = live_stack.add_account(endpoint=proxy.url, metadata=True)
    proxy.add_rule(Rule(action=Respond(503), method="PUT", path_regex=JSON_PUT))
    live_stack.record(account, "call-1", os.urandom(3000))
    media = live_stack.media_file(live_stack.nodes[0], account.namespace, "2026/11/call-1.wav")

    def pending() -> dict[str, Any] | None:
        status = live_stack.get(account.namespace, "recordings", "call-1").get("status") or {}
        condition = _metadata_condition(status)
        if status.get("phase") == "Retrying" and condition and condition["status"] == "False":
            return status
        return None

    status = wait_for(pending, timeout=90, what="Retrying with the metadata pending")
    assert status["mediaUrl"].endswith(status["storage"]["objectKey"])
    assert "metadataUrl" not in status
    condition = _metadata_condition(status)
    assert condition is not None and condition["reason"] == "MetadataPending"
    assert status["errorCode"] == 16111 and "metadata document not stored" in status["errorMessage"]
    assert media.exists(), "the media stays on the node until both are stored"
    assert not _has_object(live_stack, account, status["storage"]["objectKey"] + ".json")

    proxy.clear_rules()
    done = live_stack.wait_phase(account.namespace, "call-1", "Completed", timeout=90)["status"]
    assert done["metadataUrl"] == done["mediaUrl"] + ".json"
    condition = _metadata_condition(done)
    assert condition is not None and condition["status"] == "True"
    _document(live_stack, account, done)
    wait_for(lambda: not media.exists(), timeout=15, what="the media deleted once both are stored")


def test_uploader_killed_between_the_two_puts_writes_the_document_once(
    live_stack: Stack, proxy: FaultProxy
) -> None:
    account = live_stack.add_account(endpoint=proxy.url, metadata=True)
    proxy.add_rule(Rule(action=Blackhole(), method="PUT", path_regex=JSON_PUT))
    live_stack.record(account, "call-1", os.urandom(17 * MIB + 3), node="node-b")
    wait_for(lambda: _json_puts(proxy, forwarded=False) > 0, timeout=90, what="the document's PUT")
    killed = kill_leftovers(live_stack.kubelet.root, ["node-b"])
    assert killed, "the uploader process was running"
    proxy.clear_rules()
    status = live_stack.wait_phase(account.namespace, "call-1", "Completed", timeout=120)["status"]
    assert status["attempts"] >= 2
    assert _json_puts(proxy) == 1, "the document was written exactly once"
    completes = sum(1 for r in proxy.requests if r.operation == "CompleteMultipartUpload")
    assert completes == 1, "the media was not uploaded again"
    _document(live_stack, account, status)
    assert live_stack.open_uploads(account) == []
