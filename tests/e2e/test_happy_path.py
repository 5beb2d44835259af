"""Recording → Completed through the real loop: operator, uploader pod, S3, callback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.bed.stack import Stack
from tests.support import invariants
from tests.support.callbacks import CallbackReceiver, Received
from tests.support.invariants import samples, wait_metrics_moved
from tests.support.kube import wait_for
from voicevault.operator.signature import verify_twilio_signature
from voicevault.uploader import envelope

pytestmark = [pytest.mark.kube, pytest.mark.s3, pytest.mark.slow]


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_recording_is_stored_deleted_locally_and_called_back(
    live_stack: Stack, callbacks: CallbackReceiver, encrypted: bool
) -> None:
    account = live_stack.add_account(
        encrypted=encrypted, callback_url=callbacks.url(), signing_key="auth-token-123456"
    )
    data = os.urandom(300_000)
    before = live_stack.operator.metrics()
    live_stack.record(account, "call-1", data)
    media = live_stack.media_file("node-a", account.namespace, "2026/11/call-1.wav")

    body = live_stack.wait_phase(account.namespace, "call-1", "Completed", "Failed", timeout=90)
    status = body["status"]
    assert status["phase"] == "Completed", status
    key = status["storage"]["objectKey"]
    assert status["mediaUrl"] == f"https://{account.s3.bucket}.s3.us-east-1.amazonaws.com/{key}"
    # the uploader writes Completed, then deletes the media
    wait_for(lambda: not media.exists(), timeout=15, what="local media deleted after success")
    stored = live_stack.object_bytes(account, key)
    if encrypted:
        assert account.keys is not None
        details = envelope.EncryptionDetails.from_mapping(status["encryptionDetails"])
        content_key = envelope.open_content_key(account.keys.private_pem, details)
        import io

        out = io.BytesIO()
        envelope.decrypt_stream(content_key, io.BytesIO(stored), out, len(stored))
        assert out.getvalue() == data
    else:
        assert stored == data and "encryptionDetails" not in status

    def delivered() -> list[Received]:
        return callbacks.for_recording(status["sid"])

    calls = wait_for(delivered, timeout=30, what="the status callback")
    call = calls[0]
    assert call.params["RecordingUrl"] == status["mediaUrl"]
    assert call.params["RecordingStatus"] == "completed"
    assert verify_twilio_signature(
        "auth-token-123456", callbacks.url(), call.params, call.headers["X-Twilio-Signature"]
    )
    if encrypted:
        assert (
            json.loads(call.params["EncryptionDetails"])["public_key_sid"]
            == status["encryptionDetails"]["publicKeySid"]
        )
    settled = live_stack.wait_condition(
        account.namespace, "recordings", "call-1", "CallbackDelivered"
    )
    assert any(
        c["type"] == "Stored" and c["status"] == "True" for c in settled["status"]["conditions"]
    )
    assert live_stack.open_uploads(account) == []
    invariants.check(live_stack, account, {"call-1": data}, {"call-1": "node-a"}).assert_clean()
    after = wait_metrics_moved(
        live_stack,
        before,
        [
            ("voicevault_uploads_total", {"result": "completed"}, 1),
            ("voicevault_uploaded_bytes_total", {}, len(data)),
            ("voicevault_recording_store_seconds_count", {}, 1),
            ("voicevault_recordings", {"phase": "Completed"}, 1),
        ],
    )
    assert samples(after, "voicevault_storage_setting_valid", namespace=account.namespace) == [1]
    # live heap blocks, read at each scrape: a soak tells a leak from allocator high water.
    # The operator holds at least what its imports and the S3 model hold in a bare
    # interpreter, and one recording's worth of state adds little to that
    (blocks,) = samples(after, "voicevault_python_heap_blocks")
    baseline = _import_heap_blocks()
    assert baseline < blocks < 4 * baseline, (blocks, baseline)


def _import_heap_blocks() -> int:
    """Python's live blocks in a fresh interpreter that imported what the operator runs."""
    code = (
        "import sys, kopf, voicevault.operator.command, voicevault.operator.controller\n"
        "from voicevault.uploader.s3client import warm_up\n"
        "warm_up()\n"
        "print(sys.getallocatedblocks())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout)
