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

from tests.support.kube import kubectl
from voicevault.operator import webhookcert
from voicevault.operator.config import WebhookConfig
from voicevault.operator.webhook import CertKeeper, ReloadingContext, Webhook

pytestmark = pytest.mark.kube


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


def _secret(kube_api: Any, namespace: str, name: str) -> dict[str, bytes]:
    secret = k8s.CoreV1Api(kube_api).read_namespaced_secret(name, namespace)
    assert secret.type == "kubernetes.io/tls"
    return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}


def _read(kubeconfig: Path, name: str) -> dict[str, Any]:
    out = kubectl(kubeconfig, "get", "validatingwebhookconfiguration", name, "-o", "json")
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
        keeper.reconcile()
        patched = _read(kubeconfig, name)
        for hook in patched["webhooks"]:
            assert base64.b64decode(hook["clientConfig"]["caBundle"]) == first["ca.crt"]
            assert hook["clientConfig"]["url"] == "https://127.0.0.1:9/validate", "only caBundle"
        keeper.reconcile()  # nothing to do: no write at all
        assert _secret(kube_api, namespace, config.cert_secret) == first
        version = _read(kubeconfig, name)["metadata"]["resourceVersion"]
        assert version == patched["metadata"]["resourceVersion"]

        # a year on: renewed by the same CA, the bundle unchanged, the new one served
        keeper.reconcile(now=datetime.now(UTC) + timedelta(days=350))
        renewed = _secret(kube_api, namespace, config.cert_secret)
        assert renewed["ca.crt"] == first["ca.crt"]
        assert renewed["tls.crt"] != first["tls.crt"]
        assert tls.cert == renewed["tls.crt"]
        assert webhookcert.not_after(renewed["tls.crt"]) > datetime.now(UTC) + timedelta(days=700)
    finally:
        kubectl(kubeconfig, "delete", "validatingwebhookconfiguration", name)


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
