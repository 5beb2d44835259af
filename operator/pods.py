"""Uploader pods, pure: their manifests and batch Secret, and reading an ended pod.

The pod runs on the node that holds the media (spec.nodeName), mounts only the
recordings directory from the host, runs as the configured non-root user with a
read-only root filesystem and no capabilities, and gets its credentials from a Secret
the operator owns (a volume, never environment values in the pod spec).
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from typing import Any

from voicevault.contract import (
    BATCH_FILE,
    HANDOFF_FILE,
    BatchItem,
    BatchOutcome,
    BatchSpec,
    CredentialFile,
    HandoffFile,
    credential_file_name,
)
from voicevault.operator.config import UploaderPodConfig
from voicevault.operator.queues import QueueEntry

LABELS = {
    "app.kubernetes.io/name": "voicevault",
    "app.kubernetes.io/component": "uploader",
    "app.kubernetes.io/managed-by": "voicevault-operator",
}
SELECTOR = ",".join(f"{k}={v}" for k, v in LABELS.items())
NODE_LABEL = "voicevault.io/node"
BATCH_MOUNT = "/var/run/voicevault/batch"
MEDIA_MOUNT = "/recordings"
TERMINATION_LOG = "/dev/termination-log"


def pod_name(node: str) -> str:
    """`vv-upload-<node>-<random>`, a valid name whatever the node is called."""
    slug = re.sub(r"[^a-z0-9-]+", "-", node.lower()).strip("-")[:30].strip("-") or "node"
    digest = hashlib.sha256(node.encode()).hexdigest()[:6]
    return f"vv-upload-{slug}-{digest}-{secrets.token_hex(4)}"


def node_label_value(node: str) -> str:
    """Node names can be longer than a label value; a digest keeps it short and exact."""
    return hashlib.sha256(node.encode()).hexdigest()[:16]


def uploader_pod(
    name: str, node: str, secret_name: str, config: UploaderPodConfig
) -> dict[str, Any]:
    args = [
        "uploader",
        "--batch-dir",
        BATCH_MOUNT,
        "--media-root",
        MEDIA_MOUNT,
        "--termination-log",
        TERMINATION_LOG,
        "--concurrency",
        str(config.concurrency),
        "--part-concurrency",
        str(config.part_concurrency),
        "--part-size",
        str(config.part_size_mib),
        "--progress-interval",
        str(config.progress_interval_seconds),
        "--log-level",
        config.log_level,
    ]
    spec: dict[str, Any] = {
        "nodeName": node,
        "restartPolicy": "Never",
        "serviceAccountName": config.service_account,
        "automountServiceAccountToken": True,
        "activeDeadlineSeconds": config.active_deadline_seconds,
        "terminationGracePeriodSeconds": 60,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": config.run_as_user,
            "runAsGroup": config.run_as_group,
            "fsGroup": config.run_as_group,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "tolerations": [dict(t) for t in config.tolerations],
        "containers": [
            {
                "name": "uploader",
                "image": config.image,
                "imagePullPolicy": config.image_pull_policy,
                "command": list(config.command),
                "args": args,
                "env": [{"name": "HOME", "value": "/tmp"}],  # noqa: S108 - an emptyDir
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "runAsNonRoot": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "resources": {
                    "requests": {"cpu": config.cpu_request, "memory": config.memory_request},
                    "limits": {"memory": config.memory_limit},
                },
                "terminationMessagePath": TERMINATION_LOG,
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "volumeMounts": [
                    {"name": "recordings", "mountPath": MEDIA_MOUNT},
                    {"name": "batch", "mountPath": BATCH_MOUNT, "readOnly": True},
                    {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - an emptyDir
                ],
            }
        ],
        "volumes": [
            {
                "name": "recordings",
                "hostPath": {"path": config.recordings_host_path, "type": "Directory"},
            },
            {"name": "batch", "secret": {"secretName": secret_name, "defaultMode": 0o440}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        ],
    }
    if config.priority_class:
        spec["priorityClassName"] = config.priority_class
    if config.node_selector:
        spec["nodeSelector"] = dict(config.node_selector)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": config.namespace,
            "labels": LABELS | {NODE_LABEL: node_label_value(node)},
            "annotations": {"voicevault.io/node-name": node},
        },
        "spec": spec,
    }


def batch_secret(
    name: str,
    namespace: str,
    batch: BatchSpec,
    credentials: dict[str, CredentialFile],
    handoff: HandoffFile | None = None,
) -> dict[str, Any]:
    """The batch, its credentials and how to ask for more work. Created before the pod,
    so the pod starts at once; then owned by the pod (`owner_reference`) so it is
    garbage-collected with it."""
    data = {BATCH_FILE: batch.to_json()}
    data.update({file: cred.to_json() for file, cred in credentials.items()})
    if handoff is not None:
        data[HANDOFF_FILE] = handoff.to_json()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": name, "namespace": namespace, "labels": LABELS},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def owner_reference(pod: dict[str, Any]) -> dict[str, Any]:
    meta = pod["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": False,
    }


def waiting_reason(pod: dict[str, Any]) -> str:
    """Why the kubelet has not started the container (``ErrImageNeverPull: ...``), if known."""
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            detail = f": {waiting['message']}" if waiting.get("message") else ""
            return f" ({waiting['reason']}{detail})"
    return ""


def oom_message(pod: dict[str, Any]) -> str:
    """An OOM kill in words: which limit, and the chart value that sets it."""
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    limit = ((containers[0].get("resources") or {}).get("limits") or {}).get("memory")
    of = f" of {limit}" if limit else ""
    return (
        f"the uploader pod was killed for using more than its memory limit{of} (OOMKilled); "
        "raise the uploader memory limit (chart value uploader.memoryLimit)"
    )


def outcome(pod: dict[str, Any] | None, lost: str | None) -> tuple[BatchOutcome | None, str | None]:
    """The pod's reported outcome and, if it did not end normally, why."""
    if pod is None:
        return None, lost
    status = pod.get("status", {})
    terminated: dict[str, Any] = {}
    for container in status.get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated") or {}
    outcome = BatchOutcome.decode(terminated.get("message") or "") if terminated else None
    if lost:
        return outcome, lost
    exit_code = terminated.get("exitCode")
    if status.get("phase") == "Failed" and status.get("reason"):
        return (
            outcome,
            f"the uploader pod was {status['reason']}: {status.get('message', '')}".strip(": "),
        )
    if terminated.get("reason") == "OOMKilled":
        return outcome, oom_message(pod)
    if exit_code not in (0, None, 143):
        reason = terminated.get("reason") or "Error"
        return outcome, f"the uploader pod exited with code {exit_code} ({reason})"
    if outcome is None:
        return None, "the uploader pod ended without reporting a result"
    return outcome, None


CredentialRef = tuple[str, str]  # (namespace, AwsCredential name)


def batch_for(
    pod_name: str,
    node: str,
    entries: list[QueueEntry],
    found: dict[CredentialRef, CredentialFile],
) -> tuple[BatchSpec, dict[str, CredentialFile], dict[CredentialRef, str]]:
    """The batch, its credential files and which file holds which credential: one file
    per (namespace, credential) of these entries, numbered in the same pass that names
    them in the items."""
    refs: dict[CredentialRef, str] = {}
    files: dict[str, CredentialFile] = {}
    for entry in entries:
        ref = (entry.namespace, entry.snapshot.credential_name)
        if ref not in refs:
            refs[ref] = credential_file_name(len(files))
            files[refs[ref]] = found[ref]
    return BatchSpec(pod=pod_name, node=node, items=batch_items(entries, refs)), files, refs


def batch_items(entries: list[QueueEntry], refs: dict[CredentialRef, str]) -> list[BatchItem]:
    """The entries as batch items, each naming the file of its credential in `refs`."""
    return [
        BatchItem(
            namespace=e.namespace,
            name=e.name,
            uid=e.uid,
            sid=e.sid,
            action=e.action,
            media_path=e.media_path,
            bucket_url=e.snapshot.bucket_url,
            endpoint_url=e.snapshot.endpoint_url,
            region=e.snapshot.region,
            bucket=e.snapshot.bucket,
            object_key=e.snapshot.object_key,
            media_url=e.snapshot.media_url,
            public_key=e.snapshot.public_key,
            public_key_sid=e.snapshot.public_key_sid,
            credential=refs[(e.namespace, e.snapshot.credential_name)],
            credential_name=e.snapshot.credential_name,
            metadata=e.metadata,
            resource_version=e.resource_version if e.scheduled_status else "",
            status=e.scheduled_status,
            claim=e.claim or {},
        )
        for e in entries
    ]


def batch_summary(items: list[QueueEntry], node: str) -> str:
    """The pod's Event: how many recordings of which namespaces it carries."""
    namespaces = sorted({item.namespace for item in items})
    shown = ", ".join(namespaces[:5]) + (
        f" and {len(namespaces) - 5} more" if len(namespaces) > 5 else ""
    )
    purges = sum(1 for item in items if item.action == "purge")
    purging = f" ({purges} to remove)" if purges else ""
    return f"{len(items)} recording(s){purging} from node {node}, namespace(s) {shown}"
