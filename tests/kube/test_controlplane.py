"""The control plane is a real Kubernetes API: right version, RBAC, Pod Security admission."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client as k8s

from tests.bed.binaries import KUBERNETES_VERSION
from tests.bed.controlplane import ControlPlane, api_client

pytestmark = pytest.mark.kube


def _message(error: k8s.ApiException) -> str:
    """The apiserver's Status message (the body is JSON)."""
    return str(json.loads(error.body or "{}").get("message", ""))


def test_apiserver_reports_pinned_version(kube_api: Any) -> None:
    assert k8s.VersionApi(kube_api).get_code().git_version == KUBERNETES_VERSION


def test_restricted_user_is_forbidden_where_admin_is_allowed(
    control_plane: ControlPlane, kube_api: Any, namespace: str
) -> None:
    k8s.CoreV1Api(kube_api).list_namespaced_secret(namespace)  # admin: allowed

    path = control_plane.kubeconfig_for("tenant-a", ["voicevault:tenants"])
    restricted = api_client(path)
    try:
        with pytest.raises(k8s.ApiException) as denied:
            k8s.CoreV1Api(restricted).list_namespaced_secret(namespace)
    finally:
        restricted.close()
    assert denied.value.status == 403
    assert 'User "tenant-a" cannot list resource "secrets"' in _message(denied.value)


def _pod(privileged: bool) -> k8s.V1Pod:
    if privileged:
        security = k8s.V1SecurityContext(privileged=True)
    else:
        security = k8s.V1SecurityContext(
            allow_privilege_escalation=False,
            run_as_non_root=True,
            capabilities=k8s.V1Capabilities(drop=["ALL"]),
            seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
        )
    container = k8s.V1Container(name="c", image="busybox", security_context=security)
    # nodeName set: there is no scheduler, and voicevault pins its pods to nodes anyway.
    spec = k8s.V1PodSpec(containers=[container], node_name="node-a")
    return k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="probe"), spec=spec)


def test_restricted_pod_security_rejects_privileged_pod(kube_api: Any, namespace: str) -> None:
    core = k8s.CoreV1Api(kube_api)
    label = {"pod-security.kubernetes.io/enforce": "restricted"}
    core.patch_namespace(namespace, {"metadata": {"labels": label}})

    # Dry run still runs admission; the compliant pod proves the rejection is about privilege.
    core.create_namespaced_pod(namespace, _pod(privileged=False), dry_run="All")
    with pytest.raises(k8s.ApiException) as rejected:
        core.create_namespaced_pod(namespace, _pod(privileged=True), dry_run="All")
    assert rejected.value.status == 403
    assert "violates PodSecurity" in _message(rejected.value)
