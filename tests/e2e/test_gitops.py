"""GitOps: the examples applied with server-side apply stay diff-free, before and after
the operator reconciled them, and a reconcile that finds nothing new writes nothing."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s

from tests.bed.fixtures import unique_name
from tests.bed.stack import Stack
from tests.support.kube import REPO, kubectl, wait_for
from voicevault import API_GROUP, API_VERSION

pytestmark = [pytest.mark.kube, pytest.mark.slow]
EXAMPLES = [REPO / "examples" / "aws", REPO / "examples" / "recording.yaml"]
NAMESPACE = "acme-recordings"
OBJECTS = [
    ("awscredentials", "s3-writer"),
    ("voicestoragesettings", "default"),
    ("recordings", "call-0001"),
]


def _apply(kubeconfig: Path) -> str:
    args = ["apply", "--server-side", "--field-manager=gitops"]
    for path in EXAMPLES:
        args += ["-f", str(path)]
    return kubectl(kubeconfig, *args).stdout


def _no_diff(kubeconfig: Path) -> bool:
    args = ["diff", "--server-side", "--field-manager=gitops"]
    for path in EXAMPLES:
        args += ["-f", str(path)]
    proc = kubectl(kubeconfig, *args, check=False)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode == 0


def _versions(stack: Stack) -> dict[str, str]:
    return {
        f"{p}/{n}": stack.get(NAMESPACE, p, n)["metadata"]["resourceVersion"] for p, n in OBJECTS
    }


def _applied(stack: Stack) -> dict[str, tuple[int, list[dict[str, object]]]]:
    """What the GitOps apply owns of each object: its generation and the `gitops`
    manager's managed fields (with their time). The operator, live meanwhile, may add its
    finalizer and status, which move resourceVersion but neither of these."""
    out = {}
    for plural, name in OBJECTS:
        meta = stack.get(NAMESPACE, plural, name)["metadata"]
        mine = [m for m in meta["managedFields"] if m["manager"] == "gitops"]
        out[f"{plural}/{name}"] = (meta["generation"], mine)
    return out


def _counter(metrics: str, verb: str, resource: str) -> float:
    pattern = (
        rf'voicevault_kube_requests_total\{{resource="{re.escape(resource)}",verb="{verb}"\}} (\S+)'
    )
    found = re.search(pattern, metrics)
    return float(found.group(1)) if found else 0.0


def test_apply_twice_reconcile_apply_again_changes_nothing(live_stack: Stack) -> None:
    kubeconfig = live_stack.cp.admin_kubeconfig
    _apply(kubeconfig)
    assert _no_diff(kubeconfig), "a second apply would change something"
    first = _applied(live_stack)
    _apply(kubeconfig)
    assert _applied(live_stack) == first, "the second apply changed something"

    # the operator reconciles: a Secret is missing, so everything waits, with statuses
    live_stack.wait_condition(
        NAMESPACE, "awscredentials", "s3-writer", "Ready", status="False", reason="SecretNotFound"
    )
    live_stack.wait_condition(
        NAMESPACE,
        "voicestoragesettings",
        "default",
        "Ready",
        status="False",
        reason="CredentialNotReady",
    )
    live_stack.wait_phase(NAMESPACE, "call-0001", "Pending")
    recording = live_stack.get(NAMESPACE, "recordings", "call-0001")
    assert recording["metadata"]["finalizers"] == ["voicevault.io/cleanup"]

    assert _no_diff(kubeconfig), "the operator changed a field the GitOps manifests own"
    reconciled = _versions(live_stack)
    _apply(kubeconfig)
    assert _versions(live_stack) == reconciled, "the third apply changed something"
    managers = {m["manager"] for m in recording["metadata"]["managedFields"]}
    assert "gitops" in managers


def test_a_reconcile_that_finds_nothing_new_writes_nothing(live_stack: Stack) -> None:
    account = live_stack.add_account()
    credential = live_stack.wait_condition(
        account.namespace, "awscredentials", "s3-writer", "Ready"
    )
    status_before = credential["status"]
    metrics = live_stack.operator.metrics()
    secret_reads = _counter(metrics, "get", "secrets")
    status_writes = _counter(metrics, "patch", "awscredentials/status")
    # any change makes the operator look again (it re-reads the Secret) ...
    kubectl(
        live_stack.cp.admin_kubeconfig,
        "label",
        "awscredential",
        "s3-writer",
        "-n",
        account.namespace,
        "touched=yes",
    )
    touched = live_stack.get(account.namespace, "awscredentials", "s3-writer")["metadata"][
        "resourceVersion"
    ]
    wait_for(
        lambda: _counter(live_stack.operator.metrics(), "get", "secrets") > secret_reads,
        what="the operator to re-check the credential",
    )
    # ... and, finding the same, writes nothing: no timestamp churn, no patch loop
    after = live_stack.get(account.namespace, "awscredentials", "s3-writer")
    assert after["metadata"]["resourceVersion"] == touched
    assert after["status"] == status_before
    assert (
        _counter(live_stack.operator.metrics(), "patch", "awscredentials/status") == status_writes
    )


def test_a_completed_recording_stays_diff_free(live_stack: Stack, tmp_path: Path) -> None:
    """The whole loop driven from manifests: after Completed, apply and diff change nothing."""
    namespace = unique_name("gitops")
    live_stack.core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace)))
    bucket = live_stack.s3.add_bucket(unique_name("gitops"), "calls/")
    # the Secret is created by the platform's secrets tool, never kept in the GitOps repo
    live_stack.core.create_namespaced_secret(
        namespace,
        k8s.V1Secret(
            metadata=k8s.V1ObjectMeta(name="s3-writer-keys"),
            string_data={
                "AWS_ACCESS_KEY_ID": bucket.access_key_id,
                "AWS_SECRET_ACCESS_KEY": bucket.secret_access_key,
            },
        ),
    )
    node = live_stack.nodes[0]
    live_stack.put_media(node, namespace, "2026/12/call-1.wav", os.urandom(4096))
    group = f"{API_GROUP}/{API_VERSION}"
    docs = [
        {
            "apiVersion": group,
            "kind": "AwsCredential",
            "metadata": {"name": "s3-writer", "namespace": namespace},
            "spec": {"secretRef": {"name": "s3-writer-keys"}},
        },
        {
            "apiVersion": group,
            "kind": "VoiceStorageSetting",
            **live_stack.setting_body(bucket),
        },
        {
            "apiVersion": group,
            "kind": "Recording",
            "metadata": {"name": "call-1", "namespace": namespace},
            "spec": {
                "accountSid": "AC" + "0123456789abcdef" * 2,
                "callSid": "CA" + "fedcba9876543210" * 2,
                "source": "RecordVerb",
                "channels": 1,
                "startTime": "2026-12-01T09:00:00Z",
                "duration": 3,
                "nodeName": node,
                "mediaPath": "2026/12/call-1.wav",
            },
        },
    ]
    docs[1]["metadata"]["namespace"] = namespace
    manifest = tmp_path / "account.yaml"
    manifest.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    kubeconfig = live_stack.cp.admin_kubeconfig
    ssa = ["--server-side", "--field-manager=gitops", "-f", str(manifest)]
    kubectl(kubeconfig, "apply", *ssa)

    live_stack.wait_phase(namespace, "call-1", "Completed")
    live_stack.wait_condition(namespace, "recordings", "call-1", "Stored")
    objects = [
        ("awscredentials", "s3-writer"),
        ("voicestoragesettings", "default"),
        ("recordings", "call-1"),
    ]
    settled = {
        p: live_stack.get(namespace, p, n)["metadata"]["resourceVersion"] for p, n in objects
    }
    diff = kubectl(kubeconfig, "diff", *ssa, check=False)
    assert diff.returncode == 0, f"a GitOps diff after Completed:\n{diff.stdout}"
    kubectl(kubeconfig, "apply", *ssa)
    after = {p: live_stack.get(namespace, p, n)["metadata"]["resourceVersion"] for p, n in objects}
    assert after == settled, "re-applying the manifests changed a settled object"
