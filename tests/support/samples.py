"""Valid example resources; tests derive invalid ones by changing one thing."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import datetime
from typing import Any

from voicevault.contract import BatchItem
from voicevault.crds.recording import StorageSnapshot
from voicevault.operator.queues import QueueEntry

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
CALL_SID = "CA" + "fedcba9876543210" * 2


def credential(
    name: str = "s3-writer", secret: str = "s3-writer-keys", **spec: Any
) -> dict[str, Any]:
    return {
        "kind": "AwsCredential",
        "metadata": {"name": name},
        "spec": {"friendlyName": "recordings bucket", "secretRef": {"name": secret}, **spec},
    }


def setting(
    bucket_url: str = "https://recordings.s3.eu-west-1.amazonaws.com/calls/",
    credential_name: str = "s3-writer",
    **storage: Any,
) -> dict[str, Any]:
    return {
        "kind": "VoiceStorageSetting",
        "metadata": {"name": "default"},
        "spec": {
            "externalStorage": {
                "bucketUrl": bucket_url,
                "credentialRef": {"name": credential_name},
                **storage,
            }
        },
    }


def recording(
    name: str = "call-1", node: str = "node-a", media_path: str = "2026/11/call-1.wav", **spec: Any
) -> dict[str, Any]:
    return {
        "kind": "Recording",
        "metadata": {"name": name},
        "spec": {
            "accountSid": ACCOUNT_SID,
            "callSid": CALL_SID,
            "source": "StartCallRecordingAPI",
            "channels": 2,
            "track": "both",
            "startTime": "2026-11-25T10:00:00Z",
            "duration": 42,
            "nodeName": node,
            "mediaPath": media_path,
            **spec,
        },
    }


def changed(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy with `path` (dotted, under the body) set to `value`, or removed if value is ...."""
    out = copy.deepcopy(body)
    *parents, last = path.split(".")
    node = out
    for part in parents:
        node = node.setdefault(part, {})
    if value is ...:
        node.pop(last, None)
    else:
        node[last] = value
    return out


def batch_item(**changes: Any) -> BatchItem:
    """A batch item for a plain upload into `recordings` (us-east-1); `changes` override."""
    fields: dict[str, Any] = {
        "namespace": "acct",
        "name": "call-1",
        "uid": "u-1",
        "sid": "RE" + "0" * 32,
        "media_path": "2026/11/call-1.wav",
        "bucket_url": "https://recordings.s3.amazonaws.com/calls",
        "region": "us-east-1",
        "bucket": "recordings",
        "object_key": "calls/x.wav",
        "media_url": "https://recordings.s3.amazonaws.com/calls/x.wav",
        "credential": "credential-0.json",
    }
    return BatchItem(**(fields | changes))


def queue_entry(uid: str, node: str, due: datetime, **changes: Any) -> QueueEntry:
    """An upload waiting on `node`, in namespace `ns` and named after its uid; `changes`
    override any field (`namespace`, `name`, `resource_version`, `unwritten`...)."""
    snapshot = StorageSnapshot(
        setting_generation=1,
        bucket_url="https://b.s3.amazonaws.com/",
        region="us-east-1",
        bucket="b",
        object_key="k",
        media_url="https://b.s3.amazonaws.com/k",
        credential_name="c",
        retry_window_seconds=7200,
        initial_backoff_seconds=30,
        max_backoff_seconds=600,
    )
    entry = QueueEntry(
        "ns", uid, uid, "1", node, "RE" + "0" * 32, "x.wav", snapshot, 0, "upload", due, due
    )
    return replace(entry, **changes)
