"""GitOps: the examples applied with server-side apply stay diff-free, before and after
the operator reconciled them, and a reconcile that finds nothing new writes nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.bed.stack import Stack
from tests.support.kube import REPO, kubectl, wait_for

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
    first = _versions(live_stack)
    _apply(kubeconfig)
    assert _versions(live_stack) == first

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
