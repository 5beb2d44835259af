"""The webhook's certificate keeper against the real API server: Secret and caBundle."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from tests.bed.controlplane import ControlPlane, api_client
from tests.support.kube import kubectl
from voicevault.operator import webhookcert
from voicevault.operator.config import WebhookConfig
from voicevault.operator.webhook import CertKeeper, ReloadingContext, Webhook

pytestmark = pytest.mark.kube
MUTATING = "mutatingwebhookconfiguration"
KINDS = ("validatingwebhookconfiguration", MUTATING)


def _configuration(name: str) -> dict[str, Any]:
    """Registered but inert: it matches no namespace and is ignored when unreachable."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": f"{kind}.voicevault.io",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Ignore",
                "namespaceSelector": {"matchLabels": {"voicevault.io/keeper-test": name}},
                "rules": [
                    {
                        "apiGroups": ["voicevault.io"],
                        "apiVersions": ["*"],
                        "operations": ["CREATE"],
                        "resources": [kind],
                    }
                ],
                "clientConfig": {"url": "https://127.0.0.1:9/validate"},
            }
            for kind in ("voicestoragesettings", "awscredentials")
        ],
    }


def _mutating(name: str) -> dict[str, Any]:
    """The chart's recording webhook, as inert as the one above."""
    config = _configuration(name)
    (hook, _) = config["webhooks"]
    hook |= {
        "name": "recordings.voicevault.io",
        "reinvocationPolicy": "Never",
        "clientConfig": {"url": "https://127.0.0.1:9/mutate"},
    }
    hook["rules"][0]["resources"] = ["recordings"]
    return config | {"kind": "MutatingWebhookConfiguration", "webhooks": [hook]}


def _secret(kube_api: Any, namespace: str, name: str) -> dict[str, bytes]:
    secret = k8s.CoreV1Api(kube_api).read_namespaced_secret(name, namespace)
    assert secret.type == "kubernetes.io/tls"
    return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}


def _read(
    kubeconfig: Path, name: str, kind: str = "validatingwebhookconfiguration"
) -> dict[str, Any]:
    out = kubectl(kubeconfig, "get", kind, name, "-o", "json")
    config: dict[str, Any] = json.loads(out.stdout)
    return config


def test_the_keeper_makes_the_secret_patches_the_bundle_and_renews(
    kube_api: Any, kubeconfig: Path, namespace: str
) -> None:
    name = f"vv-keeper-{uuid.uuid4().hex[:8]}"
    config = WebhookConfig(namespace=namespace, configuration=name, extra_hosts=("127.0.0.1",))
    tls = ReloadingContext()
    keeper = CertKeeper(kube_api, config, tls)

    keeper.reconcile()  # no configuration yet: the Secret is made and served all the same
    first = _secret(kube_api, namespace, config.cert_secret)
    assert set(first) == {"ca.crt", "ca.key", "tls.crt", "tls.key"}
    assert tls.cert == first["tls.crt"]

    kubectl(kubeconfig, "create", "-f", "-", input_text=json.dumps(_configuration(name)))
    try:
        keeper.reconcile()  # the mutating one is optional: its absence is no failure
        patched = _read(kubeconfig, name)
        for hook in patched["webhooks"]:
            assert base64.b64decode(hook["clientConfig"]["caBundle"]) == first["ca.crt"]
            assert hook["clientConfig"]["url"] == "https://127.0.0.1:9/validate", "only caBundle"
        kubectl(kubeconfig, "create", "-f", "-", input_text=json.dumps(_mutating(name)))
        keeper.reconcile()
        mutated = _read(kubeconfig, name, MUTATING)
        (hook,) = mutated["webhooks"]
        assert base64.b64decode(hook["clientConfig"]["caBundle"]) == first["ca.crt"]
        assert hook["clientConfig"]["url"] == "https://127.0.0.1:9/mutate", "only caBundle"
        keeper.reconcile()  # nothing to do: no write at all
        assert _secret(kube_api, namespace, config.cert_secret) == first
        versions = [_read(kubeconfig, name, k)["metadata"]["resourceVersion"] for k in KINDS]
        assert versions == [
            patched["metadata"]["resourceVersion"],
            mutated["metadata"]["resourceVersion"],
        ]

        # a year on: renewed by the same CA, the bundle unchanged, the new one served
        keeper.reconcile(now=datetime.now(UTC) + timedelta(days=350))
        renewed = _secret(kube_api, namespace, config.cert_secret)
        assert renewed["ca.crt"] == first["ca.crt"]
        assert renewed["tls.crt"] != first["tls.crt"]
        assert tls.cert == renewed["tls.crt"]
        assert webhookcert.not_after(renewed["tls.crt"]) > datetime.now(UTC) + timedelta(days=700)
    finally:
        for kind in KINDS:
            kubectl(kubeconfig, "delete", kind, name, "--ignore-not-found")


def test_with_cert_manager_the_keeper_only_reads_and_reloads(kube_api: Any, namespace: str) -> None:
    config = WebhookConfig(namespace=namespace, configuration="not-ours", manage_cert=False)
    tls = ReloadingContext()
    keeper = CertKeeper(kube_api, config, tls)
    with pytest.raises(RuntimeError, match=r"has no tls\.crt and tls\.key yet"):
        keeper.reconcile()
    core = k8s.CoreV1Api(kube_api)
    with pytest.raises(k8s.ApiException) as missing:
        core.read_namespaced_secret(config.cert_secret, namespace)
    assert missing.value.status == 404, "it wrote nothing"
    issued = webhookcert.plan(None, keeper.policy, datetime.now(UTC)).data
    core.create_namespaced_secret(
        namespace,
        k8s.V1Secret(
            metadata=k8s.V1ObjectMeta(name=config.cert_secret),
            type="kubernetes.io/tls",
            data={k: base64.b64encode(v).decode() for k, v in issued.items()},
        ),
    )
    keeper.reconcile()
    assert tls.cert == issued["tls.crt"]
    # even one it would renew is left as it is: cert-manager decides
    keeper.reconcile(now=datetime.now(UTC) + timedelta(days=360))
    assert _secret(kube_api, namespace, config.cert_secret) == issued


def test_a_replica_that_loses_the_race_for_the_secret_serves_the_winners_certificate(
    kube_api: Any, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two replicas start together: both find no Secret, one creates it first. The other
    gets 409 and must serve that certificate at once, not after a retry: the Service
    already sends it admission reviews."""
    config = WebhookConfig(
        namespace=namespace,
        configuration=f"vv-none-{uuid.uuid4().hex[:8]}",
        bind_address="127.0.0.1",
        port=0,  # each replica's server on a port of its own
    )
    first, second = Webhook(kube_api, config), Webhook(kube_api, config)
    first.keeper.reconcile()
    real_read = second.keeper._read_secret
    reads: list[k8s.V1Secret | None] = []

    def read() -> k8s.V1Secret | None:  # its first read came before the other's create
        reads.append(real_read() if reads else None)
        return reads[-1]

    monkeypatch.setattr(second.keeper, "_read_secret", read)
    try:
        assert second._look(), "the lost race was reported as a failure"
        assert (
            second.tls.cert
            == first.tls.cert
            == _secret(kube_api, namespace, config.cert_secret)["tls.crt"]
        )
    finally:
        first.stop()
        second.stop()


def test_without_the_right_to_read_the_mutating_one_the_validating_one_still_works(
    control_plane: ControlPlane, kube_api: Any, kubeconfig: Path, namespace: str
) -> None:
    """An operator of this version under an older chart's RBAC (no mutating rule): the
    settings webhook is kept and served all the same; recordings' finalizers are then
    written by the operator, as before."""
    name = f"vv-old-rbac-{uuid.uuid4().hex[:8]}"
    user = f"keeper-{name}"
    rbac = k8s.RbacAuthorizationV1Api(kube_api)
    rbac.create_cluster_role(
        k8s.V1ClusterRole(
            metadata=k8s.V1ObjectMeta(name=name),
            rules=[
                k8s.V1PolicyRule(
                    api_groups=["admissionregistration.k8s.io"],
                    resources=["validatingwebhookconfigurations"],
                    resource_names=[name],
                    verbs=["get", "patch"],
                ),
                k8s.V1PolicyRule(api_groups=[""], resources=["secrets"], verbs=["get", "create"]),
            ],
        )
    )
    rbac.create_cluster_role_binding(
        k8s.V1ClusterRoleBinding(
            metadata=k8s.V1ObjectMeta(name=name),
            role_ref=k8s.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=name
            ),
            subjects=[
                k8s.RbacV1Subject(kind="User", name=user, api_group="rbac.authorization.k8s.io")
            ],
        )
    )
    for body in (_configuration(name), _mutating(name)):
        kubectl(kubeconfig, "create", "-f", "-", input_text=json.dumps(body))
    limited = api_client(control_plane.kubeconfig_for(user, ["system:authenticated"]))
    try:
        config = WebhookConfig(namespace=namespace, configuration=name, extra_hosts=("127.0.0.1",))
        tls = ReloadingContext()
        CertKeeper(limited, config, tls).reconcile()
        ca = _secret(kube_api, namespace, config.cert_secret)["ca.crt"]
        assert tls.cert, "serving"
        for hook in _read(kubeconfig, name)["webhooks"]:
            assert base64.b64decode(hook["clientConfig"]["caBundle"]) == ca
        (hook,) = _read(kubeconfig, name, MUTATING)["webhooks"]
        assert "caBundle" not in hook["clientConfig"], "it could not, and did not fail"
    finally:
        limited.close()
        for kind in KINDS:
            kubectl(kubeconfig, "delete", kind, name, "--ignore-not-found")
        rbac.delete_cluster_role_binding(name)
        rbac.delete_cluster_role(name)
