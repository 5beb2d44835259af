"""The chart offline: lint, render with default and non-default values, schema errors."""

from __future__ import annotations

import argparse
import re
from typing import Any

import pytest
import yaml

from tests.helm.chart import (
    APP_VERSION,
    CHART,
    PSA_LABEL,
    SCHEMA_ERROR,
    Helm,
    container_args,
    find,
    kinds,
)
from voicevault.operator.command import (
    config_from,
    configure,
    lease_timing,
    webhook_config_from,
)
from voicevault.operator.leaselock import LeaseTiming

pytestmark = pytest.mark.helm

RELEASE_NS = "voicevault-system"
NON_DEFAULT = [
    "uploader.namespace=vv-uploads",
    "uploader.createNamespace=true",
    "uploader.recordingsHostPath=/data/recordings",
    "uploader.runAsUser=2000",
    "uploader.runAsGroup=3000",
    "uploader.batchSize=10",
    "uploader.maxActivePods=7",
    "uploader.concurrency=8",
    "uploader.partConcurrency=3",
    "uploader.podStartTimeout=120",
    "uploader.memoryLimit=256Mi",
    "uploader.memoryRequest=64Mi",
    "uploader.cpuRequest=50m",
    r"uploader.nodeSelector.node-role\.example/recordings=yes",
    "uploader.tolerations[0].key=media",
    "uploader.tolerations[0].operator=Exists",
    "uploader.tolerations[0].effect=NoExecute",
    "operator.defaultRetryWindowSeconds=14400",
    "operator.logLevel=debug",
    "operator.logFormat=plain",
    "operator.validationInterval=600",
    "operator.watchNamespaces={acme-recordings,globex-recordings}",
    "operator.extraArgs={--poll-interval=5}",
    "operator.replicas=3",
    "operator.leaderElection.leaseName=vv-leader",
    "operator.leaderElection.leaseDurationSeconds=20",
    "operator.leaderElection.renewDeadlineSeconds=15",
    "operator.leaderElection.retryPeriodSeconds=4",
    "image.repository=registry.example/vv",
    "image.tag=1.2.3",
    "image.pullPolicy=Always",
    "imagePullSecrets[0].name=regcred",
    "metrics.port=9100",
    "health.port=9101",
    "metrics.serviceMonitor.enabled=true",
    "metrics.serviceMonitor.labels.release=prometheus",
    "webhook.port=9444",
    "webhook.renewBeforeDays=14",
    "webhook.timeoutSeconds=10",
    "webhook.failurePolicy=Ignore",
]
DEFAULT_KINDS = sorted(
    ["ServiceAccount"] * 2
    + ["ClusterRole", "ClusterRoleBinding"] * 2
    + ["Role", "RoleBinding"] * 3  # uploads, the leader Lease, the webhook's certificate
    + ["Service", "Deployment", "PodDisruptionBudget"]
    + ["ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"]
)


def operator_args(deployment: dict[str, Any]) -> argparse.Namespace:
    """The Deployment's arguments, parsed by the operator's real command line."""
    args = container_args(deployment)
    assert args[0] == "operator"
    parser = argparse.ArgumentParser(exit_on_error=False)
    configure(parser)
    return parser.parse_args(args[1:])


def test_lint_default_and_non_default(helm_cli: Helm) -> None:
    for sets in ([], NON_DEFAULT):
        argv = ["lint", "--strict", str(CHART), "--namespace", RELEASE_NS]
        for item in sets:
            argv += ["--set", item]
        out = helm_cli.run(*argv)
        assert "0 chart(s) failed" in out.stdout


def test_default_values_render_the_operator(helm_cli: Helm) -> None:
    docs = helm_cli.render(extra=["--skip-tests"])
    assert kinds(docs) == DEFAULT_KINDS  # no Namespace, no ServiceMonitor by default
    deploy = find(docs, "Deployment", "voicevault")
    spec = deploy["spec"]
    # two replicas, one leader: rolling updates hand the Lease over, a drain keeps one
    assert spec["replicas"] == 2
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pdb = find(docs, "PodDisruptionBudget", "voicevault")
    assert pdb["spec"] == {"minAvailable": 1, "selector": spec["selector"]}
    pod = spec["template"]["spec"]
    (anti,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert anti["podAffinityTerm"]["labelSelector"] == spec["selector"]
    (container,) = pod["containers"]
    assert container["image"] == f"ghcr.io/voicevault/voicevault:{APP_VERSION}"
    for probe in ("livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    # Ready only once its webhook serves: the Service sends admission reviews to Ready pods
    assert container["readinessProbe"]["httpGet"] == {
        "path": "/healthz",
        "port": "webhook",
        "scheme": "HTTPS",
    }
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081, "webhook": 9443}

    # the arguments are real flags of `voicevault operator`, with the chart's defaults
    args = operator_args(deploy)
    config = config_from(args)
    assert config.pods.namespace == RELEASE_NS  # empty uploader.namespace: the release's
    assert config.pods.image == container["image"]
    assert config.pods.service_account == "voicevault-uploader"
    assert config.pods.recordings_host_path == "/var/lib/voicevault/recordings"
    assert (config.pods.run_as_user, config.pods.run_as_group) == (10001, 10001)
    assert (config.batch_size, config.max_active_pods) == (400, 50)
    assert (config.pods.concurrency, config.pods.part_concurrency) == (4, 2)
    assert config.validation_interval == 1800
    assert config.default_retry_window_seconds == 7200  # the seed's 2 hours
    assert (config.pods.node_selector, config.pods.tolerations) == ((), ())
    assert (args.metrics_port, args.health_port) == (8080, 8081)
    assert (args.log_level, args.log_format, args.namespace) == ("info", "json", None)
    assert args.leader_elect is True
    assert args.leader_election_name == "voicevault-operator"
    assert lease_timing(args) == LeaseTiming(10, 7, 2)
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"][:2]}
    assert env == {"POD_NAMESPACE": "metadata.namespace", "POD_NAME": "metadata.name"}

    # the service accounts the Deployment and the flags name are the ones RBAC binds
    assert pod["serviceAccountName"] == "voicevault-operator"
    bound = {
        d["metadata"]["name"]: d["subjects"][0]["name"]
        for d in docs
        if d["kind"] in ("ClusterRoleBinding", "RoleBinding")
    }
    assert bound == {
        "voicevault-operator": "voicevault-operator",
        "voicevault-uploader": "voicevault-uploader",
        "voicevault-operator-uploads": "voicevault-operator",
        "voicevault-operator-leader": "voicevault-operator",
        "voicevault-operator-webhook": "voicevault-operator",
    }
    role = find(docs, "Role", "voicevault-operator-uploads")
    assert role["metadata"]["namespace"] == RELEASE_NS
    leader = find(docs, "Role", "voicevault-operator-leader")
    assert leader["metadata"]["namespace"] == RELEASE_NS  # where the operator's Lease is
    assert leader["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["voicevault-operator"],
            "verbs": ["get", "update"],
        },
    ]

    service = find(docs, "Service", "voicevault")
    assert service["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]
    service_ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert service_ports == {"metrics": 8080, "health": 8081, "webhook": 443}
    assert find(docs, "Service")["spec"]["ports"][2]["targetPort"] == "webhook"

    # the webhook: the flags name the objects the chart makes, with its defaults
    hook = webhook_config_from(args)
    assert hook.enabled and hook.manage_cert
    assert (hook.port, hook.namespace) == (9443, RELEASE_NS)
    assert hook.configuration == find(docs, "ValidatingWebhookConfiguration")["metadata"]["name"]
    assert hook.configuration == find(docs, "MutatingWebhookConfiguration")["metadata"]["name"]
    assert (hook.service, hook.cert_secret) == ("voicevault", "voicevault-webhook-cert")
    assert hook.renew_before_days == 30


def test_the_validating_webhook_never_matches_recordings_and_fails_closed(helm_cli: Helm) -> None:
    config = find(helm_cli.render(extra=["--skip-tests"]), "ValidatingWebhookConfiguration")
    hooks = {h["name"]: h for h in config["webhooks"]}
    assert set(hooks) == {"voicestoragesettings.voicevault.io", "awscredentials.voicevault.io"}
    for name, hook in hooks.items():
        (rule,) = hook["rules"]
        assert rule["resources"] == [name.split(".")[0]], "one kind each, never recordings"
        assert rule["apiGroups"] == ["voicevault.io"]
        assert rule["operations"] == ["CREATE", "UPDATE"]
        assert hook["failurePolicy"] == "Fail"
        assert hook["sideEffects"] == "None"
        assert hook["admissionReviewVersions"] == ["v1"]
        assert hook["clientConfig"] == {
            "service": {
                "name": "voicevault",
                "namespace": RELEASE_NS,
                "port": 443,
                "path": "/validate",
            }
        }
    assert "annotations" not in config["metadata"]  # no caBundle, no cert-manager by default


@pytest.mark.parametrize("policy", ["Fail", "Ignore"])
def test_the_mutating_webhook_adds_the_finalizer_and_can_never_refuse(
    helm_cli: Helm, policy: str
) -> None:
    docs = helm_cli.render(
        sets=[f"webhook.failurePolicy={policy}", "webhook.timeoutSeconds=10"],
        extra=["--skip-tests"],
    )
    config = find(docs, "MutatingWebhookConfiguration")
    (hook,) = config["webhooks"]
    assert hook == {
        "name": "recordings.voicevault.io",
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": "Ignore",  # whatever webhook.failurePolicy says
        "reinvocationPolicy": "Never",
        "matchPolicy": "Equivalent",
        "timeoutSeconds": 2,  # nor webhook.timeoutSeconds
        "rules": [
            {
                "apiGroups": ["voicevault.io"],
                "apiVersions": ["*"],
                "operations": ["CREATE"],
                "resources": ["recordings"],
                "scope": "Namespaced",
            }
        ],
        "clientConfig": {
            "service": {
                "name": "voicevault",
                "namespace": RELEASE_NS,
                "port": 443,
                "path": "/mutate",
            }
        },
    }
    assert "annotations" not in config["metadata"]
    validating = find(docs, "ValidatingWebhookConfiguration")
    assert {h["failurePolicy"] for h in validating["webhooks"]} == {policy}


def test_the_recording_finalizer_webhook_can_be_turned_off(helm_cli: Helm) -> None:
    docs = helm_cli.render(sets=["webhook.recordingFinalizer=false"], extra=["--skip-tests"])
    assert "MutatingWebhookConfiguration" not in kinds(docs)
    assert "ValidatingWebhookConfiguration" in kinds(docs)
    assert webhook_config_from(operator_args(find(docs, "Deployment"))).enabled


def test_the_webhook_rbac_is_limited_to_its_own_objects(helm_cli: Helm) -> None:
    docs = helm_cli.render(extra=["--skip-tests"])
    rules = find(docs, "ClusterRole", "voicevault-operator")["rules"]
    (admission,) = [r for r in rules if r["apiGroups"] == ["admissionregistration.k8s.io"]]
    assert admission == {
        "apiGroups": ["admissionregistration.k8s.io"],
        "resources": ["validatingwebhookconfigurations", "mutatingwebhookconfigurations"],
        "resourceNames": ["voicevault"],
        "verbs": ["get", "patch"],
    }
    role = find(docs, "Role", "voicevault-operator-webhook")
    assert role["metadata"]["namespace"] == RELEASE_NS
    named, create = role["rules"]
    assert named["resourceNames"] == ["voicevault-webhook-cert"]
    assert named["verbs"] == ["get", "update"]
    assert create == {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}


def test_the_webhook_with_cert_manager(helm_cli: Helm) -> None:
    docs = helm_cli.render(sets=["webhook.certManager.enabled=true"], extra=["--skip-tests"])
    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        assert find(docs, kind)["metadata"]["annotations"] == {
            "cert-manager.io/inject-ca-from": f"{RELEASE_NS}/voicevault-webhook"
        }
    serving = find(docs, "Certificate", "voicevault-webhook")
    assert serving["spec"]["secretName"] == "voicevault-webhook-cert"
    assert serving["spec"]["dnsNames"] == [
        f"voicevault.{RELEASE_NS}.svc",
        f"voicevault.{RELEASE_NS}.svc.cluster.local",
    ]
    assert serving["spec"]["renewBefore"] == "720h"
    assert serving["spec"]["issuerRef"] == {"name": "voicevault-webhook-ca", "kind": "Issuer"}
    assert find(docs, "Certificate", "voicevault-webhook-ca")["spec"]["isCA"] is True
    assert find(docs, "Issuer", "voicevault-webhook-ca")["spec"]["ca"] == {
        "secretName": "voicevault-webhook-ca"
    }
    hook = webhook_config_from(operator_args(find(docs, "Deployment")))
    assert not hook.manage_cert, "the operator only reads and reloads cert-manager's Secret"
    rules = find(docs, "ClusterRole", "voicevault-operator")["rules"]
    assert not [r for r in rules if r["apiGroups"] == ["admissionregistration.k8s.io"]]
    (named,) = find(docs, "Role", "voicevault-operator-webhook")["rules"]
    assert named["verbs"] == ["get"]


def test_the_webhook_can_be_turned_off_or_called_by_url(helm_cli: Helm) -> None:
    off = helm_cli.render(sets=["webhook.enabled=false"], extra=["--skip-tests"])
    assert "ValidatingWebhookConfiguration" not in kinds(off)
    assert "MutatingWebhookConfiguration" not in kinds(off)
    assert not any(d["metadata"]["name"].endswith("-webhook") for d in off)
    assert not webhook_config_from(operator_args(find(off, "Deployment"))).enabled
    ports = [p["name"] for p in find(off, "Service")["spec"]["ports"]]
    assert ports == ["metrics", "health"]
    rules = find(off, "ClusterRole", "voicevault-operator")["rules"]
    assert not [r for r in rules if r["apiGroups"] == ["admissionregistration.k8s.io"]]
    by_url = helm_cli.render(
        sets=["webhook.url=https://127.0.0.1:9443/", "webhook.namespaceSelector.tier=accounts"],
        extra=["--show-only", "templates/webhook.yaml"],
    )
    for hook in find(by_url, "ValidatingWebhookConfiguration")["webhooks"]:
        assert hook["clientConfig"] == {"url": "https://127.0.0.1:9443/validate"}
        assert hook["namespaceSelector"] == {"tier": "accounts"}
    (mutating,) = find(by_url, "MutatingWebhookConfiguration")["webhooks"]
    assert mutating["clientConfig"] == {"url": "https://127.0.0.1:9443/mutate"}
    assert mutating["namespaceSelector"] == {"tier": "accounts"}


def test_operator_pod_is_locked_down(helm_cli: Helm) -> None:
    """What "restricted" demands, plus a read-only root filesystem (not part of it)."""
    deploy = find(helm_cli.render(extra=["--skip-tests"]), "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert all("hostPath" not in volume for volume in pod["volumes"])


def test_non_default_values_render(helm_cli: Helm) -> None:
    docs = helm_cli.render(sets=NON_DEFAULT, extra=["--skip-tests"])
    assert kinds(docs) == sorted([*DEFAULT_KINDS, "Namespace", "ServiceMonitor"])

    namespace = find(docs, "Namespace", "vv-uploads")
    assert namespace["metadata"]["labels"][PSA_LABEL] == "privileged"
    for kind, name in (
        ("ServiceAccount", "voicevault-uploader"),
        ("Role", "voicevault-operator-uploads"),
        ("RoleBinding", "voicevault-operator-uploads"),
    ):
        assert find(docs, kind, name)["metadata"]["namespace"] == "vv-uploads"
    uploader_sa = find(docs, "ServiceAccount", "voicevault-uploader")
    assert uploader_sa["imagePullSecrets"] == [{"name": "regcred"}]
    assert find(docs, "ServiceAccount", "voicevault-operator")["metadata"]["namespace"] == (
        RELEASE_NS
    )

    deploy = find(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/vv:1.2.3"
    assert container["imagePullPolicy"] == "Always"
    args = operator_args(deploy)
    config = config_from(args)
    assert config.pods.namespace == "vv-uploads"
    assert config.pods.image == "registry.example/vv:1.2.3"
    assert config.pods.image_pull_policy == "Always"
    assert config.pods.recordings_host_path == "/data/recordings"
    assert (config.pods.run_as_user, config.pods.run_as_group) == (2000, 3000)
    assert config.pods.memory_limit == "256Mi"
    assert (config.pods.memory_request, config.pods.cpu_request) == ("64Mi", "50m")
    assert config.pods.node_selector == (("node-role.example/recordings", "yes"),)
    assert config.pods.tolerations == (
        {"key": "media", "operator": "Exists", "effect": "NoExecute"},
    )
    assert config.default_retry_window_seconds == 14400
    assert (config.pods.concurrency, config.pods.part_concurrency) == (8, 3)
    assert (config.batch_size, config.max_active_pods) == (10, 7)
    assert (config.pod_start_timeout, config.validation_interval) == (120, 600)
    assert config.poll_interval == 5
    assert config.pods.log_level == "debug"
    assert args.namespace == ["acme-recordings", "globex-recordings"]
    assert (args.log_level, args.log_format) == ("debug", "plain")
    assert (args.metrics_port, args.health_port) == (9100, 9101)
    assert deploy["spec"]["replicas"] == 3
    assert args.leader_election_name == "vv-leader"
    assert lease_timing(args) == LeaseTiming(20, 15, 4)
    leader = find(docs, "Role", "voicevault-operator-leader")
    assert leader["rules"][1]["resourceNames"] == ["vv-leader"]
    hook = webhook_config_from(args)
    assert (hook.port, hook.renew_before_days) == (9444, 14)
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["webhook"] == 9444
    for webhook in find(docs, "ValidatingWebhookConfiguration")["webhooks"]:
        assert (webhook["timeoutSeconds"], webhook["failurePolicy"]) == (10, "Ignore")

    monitor = find(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    service = find(docs, "Service")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "metrics": 9100,
        "health": 9101,
        "webhook": 443,
    }


def test_rbac_files_render_alone(helm_cli: Helm) -> None:
    """tests/bed/stack.py installs exactly these two files."""
    docs = helm_cli.render(
        extra=[
            "--show-only",
            "templates/rbac-operator.yaml",
            "--show-only",
            "templates/rbac-uploader.yaml",
        ]
    )
    assert kinds(docs) == sorted(
        ["ServiceAccount"] * 2
        + ["ClusterRole", "ClusterRoleBinding"] * 2
        + ["Role", "RoleBinding"] * 3  # uploads, the leader Lease, the webhook's certificate
    )


def test_without_leader_election_one_replica_is_replaced_with_recreate(helm_cli: Helm) -> None:
    docs = helm_cli.render(sets=["operator.leaderElection.enabled=false"], extra=["--skip-tests"])
    assert "PodDisruptionBudget" not in kinds(docs)
    assert all(d["metadata"]["name"] != "voicevault-operator-leader" for d in docs)
    deploy = find(docs, "Deployment", "voicevault")
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}
    assert "affinity" not in deploy["spec"]["template"]["spec"]
    assert operator_args(deploy).leader_elect is False


def test_release_name_without_voicevault_is_prefixed(helm_cli: Helm) -> None:
    docs = helm_cli.render(release="acme", extra=["--skip-tests"])
    deploy = find(docs, "Deployment", "acme-voicevault")
    assert operator_args(deploy).uploader_service_account == "acme-voicevault-uploader"
    find(docs, "ServiceAccount", "acme-voicevault-uploader")


def test_helm_test_hook_renders(helm_cli: Helm) -> None:
    docs = helm_cli.render(extra=["--show-only", "templates/tests/test-operator.yaml"])
    assert kinds(docs) == ["Pod", "ServiceAccount"]
    pod = find(docs, "Pod", "voicevault-test")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["serviceAccountName"] == "voicevault-test"
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["HEALTH_URL"] == "http://voicevault.voicevault-system.svc:8081/healthz"
    assert container["command"] == ["python", "-c"]
    compile(container["args"][0], "helm-test", "exec")  # valid Python
    # plain manifests must not carry it
    skipped = helm_cli.render(extra=["--skip-tests"])
    assert all("helm.sh/hook" not in (d["metadata"].get("annotations") or {}) for d in skipped)


BAD_VALUES = [
    ("uploader.runAsUser=-1", "uploader.runAsUser: Must be greater than or equal to 1"),
    ("uploader.runAsGroup=0", "uploader.runAsGroup: Must be greater than or equal to 1"),
    (
        "operator.logLevel=loud",
        'operator.logLevel must be one of the following: "debug", "info", "warning", "error"',
    ),
    ("operator.logFormat=xml", 'operator.logFormat must be one of the following: "json"'),
    ("image.pullPolicy=Sometimes", "image.pullPolicy must be one of the following"),
    ("operator.verbose=true", "operator: Additional property verbose is not allowed"),
    ("replicaCount=2", "Additional property replicaCount is not allowed"),
    ("uploader.batchSize=0", "uploader.batchSize: Must be greater than or equal to 1"),
    ("uploader.batchSize=401", "uploader.batchSize: Must be less than or equal to 400"),
    ("metrics.port=70000", "metrics.port: Must be less than or equal to 65535"),
    ("uploader.concurrency=four", "uploader.concurrency: Invalid type. Expected: integer"),
    ("uploader.recordingsHostPath=recordings", "uploader.recordingsHostPath: Does not match"),
    ("uploader.recordingsHostPath=/var/../etc", "uploader.recordingsHostPath: Does not match"),
    ("uploader.recordingsHostPath=/", "uploader.recordingsHostPath: Does not match"),
    ("uploader.memoryLimit=lots", "uploader.memoryLimit: Does not match"),
    ("uploader.cpuRequest=fast", "uploader.cpuRequest: Does not match"),
    ("uploader.nodeSelector.zone=1", "uploader.nodeSelector.zone: Invalid type"),
    (
        "operator.defaultRetryWindowSeconds=0",
        "operator.defaultRetryWindowSeconds: Must be greater than or equal to 1",
    ),
    ("uploader.namespace=Not_A_Namespace", "uploader.namespace"),
    ("uploader.createNamespace=true", "uploader.namespace: Does not match pattern"),
    ("operator.watchNamespaces={UPPER}", "operator.watchNamespaces.0: Does not match pattern"),
    ("metrics.serviceMonitor.interval=often", "metrics.serviceMonitor.interval: Does not match"),
    ("webhook.failurePolicy=Never", 'webhook.failurePolicy must be one of the following: "Fail"'),
    ("webhook.url=http://127.0.0.1:9443", "webhook.url: Does not match pattern"),
    ("webhook.timeoutSeconds=60", "webhook.timeoutSeconds: Must be less than or equal to 30"),
]


@pytest.mark.parametrize(("value", "message"), BAD_VALUES, ids=[v for v, _ in BAD_VALUES])
def test_bad_values_are_rejected_by_the_schema(helm_cli: Helm, value: str, message: str) -> None:
    out = helm_cli.template(sets=[value], check=False)
    assert out.returncode != 0
    assert SCHEMA_ERROR in out.stderr
    assert message in out.stderr, out.stderr
    assert not out.stdout.strip()


def test_created_uploader_namespace_must_differ_from_the_release_namespace(
    helm_cli: Helm,
) -> None:
    out = helm_cli.template(
        sets=[f"uploader.namespace={RELEASE_NS}", "uploader.createNamespace=true"], check=False
    )
    assert out.returncode != 0
    assert "uploader.createNamespace: set uploader.namespace to a namespace other than" in (
        out.stderr
    )


def _leaf_keys(values: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in ("resources", "labels"):
            keys += _leaf_keys(value, f"{path}.")
        else:
            keys.append(path)
    return keys


def test_readme_documents_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    table = "\n".join(line for line in readme.splitlines() if line.startswith("| `"))
    documented = set(re.findall(r"`([a-zA-Z.]+)`", table))
    missing = [key for key in _leaf_keys(values) if key not in documented]
    assert not missing, f"chart README values table lacks {missing}"
