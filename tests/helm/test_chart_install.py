"""The chart on a real kube-apiserver: install, RBAC, Pod Security, helm test, lifecycle.

There is no controller-manager, scheduler or kubelet: Deployments never get pods,
namespaces never finish terminating, nothing is garbage-collected. What is checked is
what the API server itself decides: what gets created, who may do what (RBAC), and which
pods Pod Security admission lets in.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.bed.controlplane import ControlPlane
from tests.bed.fixtures import unique_name
from tests.bed.stack import OperatorProcess
from tests.helm.chart import (
    CHART,
    PSA_LABEL,
    Helm,
    container_args,
    find,
    fullname,
    pod_from_template,
)
from tests.helm.conftest import drop_namespace, make_namespace
from tests.support.kube import kubectl, wait_for
from voicevault import API_GROUP, API_VERSION
from voicevault.operator.config import UploaderPodConfig
from voicevault.operator.pods import uploader_pod

pytestmark = [pytest.mark.helm, pytest.mark.kube]

CRDS = [
    f"{plural}.{API_GROUP}" for plural in ("awscredentials", "voicestoragesettings", "recordings")
]
NAMESPACED_KINDS = (
    "serviceaccounts,services,deployments,roles,rolebindings,secrets,configmaps,pods,"
    "poddisruptionbudgets"
)
CLUSTER_KINDS = (
    "clusterroles,clusterrolebindings,namespaces,validatingwebhookconfigurations,"
    "mutatingwebhookconfigurations"
)


@dataclass
class Release:
    name: str
    namespace: str
    uploader_namespace: str
    helm: Helm

    @property
    def fullname(self) -> str:
        return fullname(self.name)

    @property
    def sets(self) -> list[str]:
        return [f"uploader.namespace={self.uploader_namespace}", "uploader.createNamespace=true"]

    def user(self, account: str) -> str:
        """The operator's account is in the release namespace, the uploader's beside its pods."""
        namespace = self.uploader_namespace if account == "uploader" else self.namespace
        return f"system:serviceaccount:{namespace}:{self.fullname}-{account}"

    def install(self, *sets: str) -> None:
        args = ["install", self.name, str(CHART), "--namespace", self.namespace]
        for item in [*self.sets, *sets]:
            args += ["--set", item]
        self.helm.run(*args, "--timeout", "2m")

    def render(self, *extra: str) -> list[dict[str, Any]]:
        return self.helm.render(
            release=self.name, namespace=self.namespace, sets=self.sets, extra=extra
        )

    def uninstall(self) -> subprocess.CompletedProcess[str]:
        return self.helm.run(
            "uninstall",
            self.name,
            "--namespace",
            self.namespace,
            "--timeout",
            "2m",
            check=False,
        )


def new_release(kube_api: Any, helm: Helm) -> Release:
    # short names: the test bed's client certificates carry the user name as a CN (<= 64)
    return Release(
        name=unique_name("voicevault"),
        namespace=make_namespace(kube_api, "vs"),
        uploader_namespace=unique_name("vv-up"),
        helm=helm,
    )


def cleanup(kube_api: Any, release: Release) -> None:
    release.uninstall()
    drop_namespace(kube_api, release.namespace)
    drop_namespace(kube_api, release.uploader_namespace)


@pytest.fixture(scope="module")
def release(kubeconfig: Path, kube_api: Any, helm_cli: Helm) -> Iterator[Release]:
    """One release: operator in its namespace, uploader pods in a chart-made namespace."""
    installed = new_release(kube_api, helm_cli.with_kubeconfig(kubeconfig))
    installed.install()
    yield installed
    cleanup(kube_api, installed)


def release_objects(kubeconfig: Path, name: str) -> list[str]:
    selector = f"app.kubernetes.io/instance={name}"
    names: list[str] = []
    for kinds in (NAMESPACED_KINDS, CLUSTER_KINDS):
        out = kubectl(kubeconfig, "get", kinds, "-A", "-l", selector, "-o", "name")
        names += out.stdout.split()
    return sorted(names)


# --- install --------------------------------------------------------------------------


def test_install_creates_the_release_objects(kubeconfig: Path, release: Release) -> None:
    status = json.loads(
        release.helm.run("status", release.name, "-n", release.namespace, "-o", "json").stdout
    )
    assert status["info"]["status"] == "deployed"
    notes = status["info"]["notes"]
    assert f"namespace {release.uploader_namespace}" in notes
    assert f"helm test {release.name}" in notes
    assert "VoiceStorageSetting" in notes
    assert f"validatingwebhookconfiguration/{release.fullname} refuses" in notes
    assert "recordings are never refused" in notes
    assert f"mutatingwebhookconfiguration/{release.fullname} gives new recordings" in notes
    full = release.fullname
    assert release_objects(kubeconfig, release.name) == sorted(
        [
            f"clusterrole.rbac.authorization.k8s.io/{full}-operator",
            f"clusterrole.rbac.authorization.k8s.io/{full}-uploader",
            f"clusterrolebinding.rbac.authorization.k8s.io/{full}-operator",
            f"clusterrolebinding.rbac.authorization.k8s.io/{full}-uploader",
            f"deployment.apps/{full}",
            f"namespace/{release.uploader_namespace}",
            f"poddisruptionbudget.policy/{full}",
            f"role.rbac.authorization.k8s.io/{full}-operator-leader",
            f"role.rbac.authorization.k8s.io/{full}-operator-uploads",
            f"rolebinding.rbac.authorization.k8s.io/{full}-operator-leader",
            f"role.rbac.authorization.k8s.io/{full}-operator-webhook",
            f"rolebinding.rbac.authorization.k8s.io/{full}-operator-uploads",
            f"rolebinding.rbac.authorization.k8s.io/{full}-operator-webhook",
            f"service/{full}",
            f"serviceaccount/{full}-operator",
            f"serviceaccount/{full}-uploader",
            f"validatingwebhookconfiguration.admissionregistration.k8s.io/{full}",
            f"mutatingwebhookconfiguration.admissionregistration.k8s.io/{full}",
        ]
    )
    namespace = json.loads(
        kubectl(kubeconfig, "get", "namespace", release.uploader_namespace, "-o", "json").stdout
    )
    assert namespace["metadata"]["labels"][PSA_LABEL] == "privileged"
    role = json.loads(
        kubectl(
            kubeconfig,
            "get",
            "role",
            f"{full}-operator-uploads",
            "-n",
            release.uploader_namespace,
            "-o",
            "json",
        ).stdout
    )
    assert role["metadata"]["namespace"] == release.uploader_namespace


def test_install_establishes_the_crds(kubeconfig: Path, release: Release) -> None:
    for crd in CRDS:
        kubectl(kubeconfig, "wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
    resources = json.loads(
        kubectl(kubeconfig, "get", "--raw", f"/apis/{API_GROUP}/{API_VERSION}").stdout
    )
    served = {r["name"] for r in resources["resources"]}
    assert {"awscredentials", "voicestoragesettings", "recordings"} <= served


# --- RBAC -----------------------------------------------------------------------------

# (verb, resource, namespace, allowed); namespace "UPLOADS" is the uploader namespace,
# "RELEASE" the release's, anything else an account namespace.
OPERATOR_CAN = [
    ("watch", "recordings.voicevault.io", "*", True),
    ("patch", "recordings.voicevault.io", "acct-a", True),  # finalizers and annotations
    ("patch", "recordings.voicevault.io/status", "acct-a", True),
    ("patch", "voicestoragesettings.voicevault.io/status", "acct-a", True),
    ("patch", "awscredentials.voicevault.io/status", "acct-a", True),
    ("get", "secrets", "acct-a", True),
    ("get", "secrets", "*", True),
    ("create", "events", "acct-a", True),
    ("get", "nodes", "", True),
    ("create", "pods", "UPLOADS", True),
    ("delete", "pods", "UPLOADS", True),
    ("create", "secrets", "UPLOADS", True),
    ("patch", "secrets", "UPLOADS", True),
    ("patch", "secrets", "acct-a", False),
    ("delete", "recordings.voicevault.io", "acct-a", False),
    ("update", "recordings.voicevault.io", "acct-a", False),
    ("create", "recordings.voicevault.io", "acct-a", False),
    ("delete", "voicestoragesettings.voicevault.io", "acct-a", False),
    ("create", "pods", "acct-a", False),
    ("create", "pods", "RELEASE", False),
    ("create", "secrets", "acct-a", False),
    ("update", "secrets", "acct-a", False),
    ("delete", "secrets", "acct-a", False),
    ("list", "nodes", "", False),
    ("create", "pods/exec", "UPLOADS", False),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io", "", True),  # kopf's observer
    ("update", "customresourcedefinitions.apiextensions.k8s.io", "", False),
    ("list", "namespaces", "", False),
    # the webhook: its own configuration and certificate Secret, by name (test below)
    ("list", "validatingwebhookconfigurations.admissionregistration.k8s.io", "", False),
    ("create", "validatingwebhookconfigurations.admissionregistration.k8s.io", "", False),
    ("list", "mutatingwebhookconfigurations.admissionregistration.k8s.io", "", False),
    ("create", "mutatingwebhookconfigurations.admissionregistration.k8s.io", "", False),
    ("create", "secrets", "RELEASE", True),  # the certificate Secret, the first time
    ("get", "secrets", "RELEASE", True),
    ("update", "secrets", "RELEASE", False),
]
UPLOADER_CAN = [
    ("patch", "recordings.voicevault.io/status", "acct-a", True),
    ("get", "recordings.voicevault.io/status", "acct-a", True),
    ("patch", "recordings.voicevault.io", "acct-a", False),
    ("get", "recordings.voicevault.io", "acct-a", False),
    ("update", "recordings.voicevault.io/status", "acct-a", False),
    ("get", "secrets", "UPLOADS", False),
    ("get", "secrets", "acct-a", False),
    ("list", "pods", "UPLOADS", False),
    ("create", "pods", "UPLOADS", False),
    ("patch", "voicestoragesettings.voicevault.io/status", "acct-a", False),
    ("create", "events", "acct-a", True),
    ("patch", "events", "acct-a", False),
    ("list", "events", "acct-a", False),
    ("delete", "events", "acct-a", False),
]


def can_i(kubeconfig: Path, user: str, verb: str, resource: str, namespace: str) -> bool:
    resource, _, sub = resource.partition("/")
    args = ["auth", "can-i", verb, resource, f"--as={user}"]
    if sub:
        args.append(f"--subresource={sub}")
    if namespace == "*":
        args.append("--all-namespaces")
    elif namespace:
        args += ["--namespace", namespace]
    out = kubectl(kubeconfig, *args, check=False)
    answer = out.stdout.strip()
    assert answer in ("yes", "no"), out.stderr
    return answer == "yes"


def _where(release: Release, namespace: str) -> str:
    return {"UPLOADS": release.uploader_namespace, "RELEASE": release.namespace}.get(
        namespace, namespace
    )


def _ids(table: list[tuple[str, str, str, bool]]) -> list[str]:
    return [
        f"{'can' if ok else 'cannot'}-{verb}-{res}-in-{ns or 'cluster'}"
        for verb, res, ns, ok in table
    ]


@pytest.mark.parametrize(
    ("verb", "resource", "namespace", "allowed"), OPERATOR_CAN, ids=_ids(OPERATOR_CAN)
)
def test_operator_rbac(
    kubeconfig: Path, release: Release, verb: str, resource: str, namespace: str, allowed: bool
) -> None:
    user = release.user("operator")
    assert can_i(kubeconfig, user, verb, resource, _where(release, namespace)) is allowed


@pytest.mark.parametrize(
    ("verb", "kind", "name", "namespace", "allowed"),
    [
        ("get", "validatingwebhookconfigurations", "RELEASE", "", True),
        ("patch", "validatingwebhookconfigurations", "RELEASE", "", True),
        ("patch", "validatingwebhookconfigurations", "someone-elses", "", False),
        ("delete", "validatingwebhookconfigurations", "RELEASE", "", False),
        ("get", "mutatingwebhookconfigurations", "RELEASE", "", True),
        ("patch", "mutatingwebhookconfigurations", "RELEASE", "", True),
        ("patch", "mutatingwebhookconfigurations", "someone-elses", "", False),
        ("delete", "mutatingwebhookconfigurations", "RELEASE", "", False),
        ("update", "secrets", "RELEASE-webhook-cert", "RELEASE", True),
        ("update", "secrets", "another", "RELEASE", False),
        ("update", "secrets", "RELEASE-webhook-cert", "acct-a", False),
        ("delete", "secrets", "RELEASE-webhook-cert", "RELEASE", False),
    ],
)
def test_operator_webhook_rbac_names_its_own_objects(
    kubeconfig: Path,
    release: Release,
    verb: str,
    kind: str,
    name: str,
    namespace: str,
    allowed: bool,
) -> None:
    name = name.replace("RELEASE", release.fullname)
    args = ["auth", "can-i", verb, f"{kind}/{name}", f"--as={release.user('operator')}"]
    if namespace:
        args += ["--namespace", _where(release, namespace)]
    answer = kubectl(kubeconfig, *args, check=False).stdout.strip()
    assert answer == ("yes" if allowed else "no")


@pytest.mark.parametrize(
    ("verb", "resource", "namespace", "allowed"), UPLOADER_CAN, ids=_ids(UPLOADER_CAN)
)
def test_uploader_rbac(
    kubeconfig: Path, release: Release, verb: str, resource: str, namespace: str, allowed: bool
) -> None:
    user = release.user("uploader")
    assert can_i(kubeconfig, user, verb, resource, _where(release, namespace)) is allowed


# --- Pod Security ---------------------------------------------------------------------


def create_pod(
    kubeconfig: Path, pod: dict[str, Any], *extra: str
) -> subprocess.CompletedProcess[str]:
    return kubectl(kubeconfig, "create", "-f", "-", *extra, input_text=json.dumps(pod), check=False)


def operator_pod(release: Release, namespace: str) -> dict[str, Any]:
    deploy = find(release.render("--skip-tests"), "Deployment", release.fullname)
    return pod_from_template(deploy, "operator-probe", namespace)


def test_operator_pod_is_admitted_as_restricted(
    kubeconfig: Path, release: Release, restricted_namespace: str
) -> None:
    pod = operator_pod(release, restricted_namespace)
    out = create_pod(kubeconfig, pod)
    assert out.returncode == 0, out.stderr
    assert "Warning" not in out.stderr  # no "would violate" warnings either
    created = json.loads(
        kubectl(
            kubeconfig, "get", "pod", "operator-probe", "-n", restricted_namespace, "-o", "json"
        ).stdout
    )
    assert created["spec"]["securityContext"]["runAsNonRoot"] is True
    kubectl(
        kubeconfig, "delete", "pod", "operator-probe", "-n", restricted_namespace, "--wait=false"
    )


def _pod_sc(pod: dict[str, Any]) -> dict[str, Any]:
    sc: dict[str, Any] = pod["spec"]["securityContext"]
    return sc


def _container_sc(pod: dict[str, Any]) -> dict[str, Any]:
    sc: dict[str, Any] = pod["spec"]["containers"][0]["securityContext"]
    return sc


BREAKS: dict[str, tuple[Callable[[dict[str, Any]], object], str]] = {
    "runAsNonRoot-removed": (lambda p: _pod_sc(p).pop("runAsNonRoot"), "runAsNonRoot != true"),
    "seccomp-removed": (lambda p: _pod_sc(p).pop("seccompProfile"), "seccompProfile"),
    "capabilities-kept": (
        lambda p: _container_sc(p).pop("capabilities"),
        "unrestricted capabilities",
    ),
    "privilege-escalation": (
        lambda p: _container_sc(p).update(allowPrivilegeEscalation=True),
        "allowPrivilegeEscalation != false",
    ),
    "root-user": (lambda p: _pod_sc(p).update(runAsUser=0), "runAsUser=0"),
}


@pytest.mark.parametrize("broken", sorted(BREAKS))
def test_broken_operator_pod_is_rejected(
    kubeconfig: Path, release: Release, restricted_namespace: str, broken: str
) -> None:
    """The admission check above is real: one missing setting and the pod is refused."""
    pod = operator_pod(release, restricted_namespace)
    breaker, message = BREAKS[broken]
    breaker(pod)
    out = create_pod(kubeconfig, pod)
    assert out.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in out.stderr
    assert message in out.stderr


def test_helm_test_pod_is_admitted_as_restricted(
    kubeconfig: Path, release: Release, restricted_namespace: str
) -> None:
    docs = release.render("--show-only", "templates/tests/test-operator.yaml")
    pod = copy.deepcopy(find(docs, "Pod"))
    pod["metadata"]["namespace"] = restricted_namespace
    out = create_pod(kubeconfig, pod)
    assert out.returncode == 0, out.stderr
    assert "Warning" not in out.stderr
    kubectl(
        kubeconfig,
        "delete",
        "pod",
        pod["metadata"]["name"],
        "-n",
        restricted_namespace,
        "--wait=false",
    )
    _pod_sc(pod).pop("runAsNonRoot")
    refused = create_pod(kubeconfig, pod)
    assert refused.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in refused.stderr


def test_uploader_pods_need_the_privileged_uploader_namespace(
    kubeconfig: Path, release: Release, restricted_namespace: str
) -> None:
    """Why the chart labels the uploader namespace: the operator's real uploader pod."""
    deploy = find(release.render("--skip-tests"), "Deployment", release.fullname)
    flags = dict(a.removeprefix("--").split("=", 1) for a in container_args(deploy)[1:])
    config = UploaderPodConfig(
        namespace=flags["uploader-namespace"],
        image=flags["uploader-image"],
        service_account=flags["uploader-service-account"],
        recordings_host_path=flags["recordings-host-path"],
    )
    pod = uploader_pod("vv-upload-probe", "node-a", "vv-batch-probe", config)
    assert pod["metadata"]["namespace"] == release.uploader_namespace
    admitted = create_pod(kubeconfig, pod, "--dry-run=server")
    assert admitted.returncode == 0, admitted.stderr

    pod["metadata"]["namespace"] = restricted_namespace
    refused = create_pod(kubeconfig, pod, "--dry-run=server")
    assert refused.returncode != 0
    assert "hostPath" in refused.stderr


# --- helm test, against a running operator ------------------------------------------------


@pytest.mark.slow
def test_helm_test_check_passes_against_the_operator(
    control_plane: ControlPlane, kubeconfig: Path, release: Release, tmp_path: Path
) -> None:
    """Run the helm test pod's script here: the real operator, with the chart's RBAC only.

    The operator authenticates as the chart's operator ServiceAccount, so this also
    proves the operator starts and reconciles with no more permissions than the chart
    grants. The script authenticates with a token of the test ServiceAccount, which has
    no role at all.
    """
    operator = OperatorProcess(
        control_plane.kubeconfig_for(
            release.user("operator"),
            [
                "system:serviceaccounts",
                f"system:serviceaccounts:{release.namespace}",
                "system:authenticated",
            ],
        ),
        tmp_path,
        [
            "--uploader-namespace",
            release.uploader_namespace,
            "--uploader-service-account",
            f"{release.fullname}-uploader",
            # the chart grants the leader Lease in the release namespace only
            "--leader-election-namespace",
            release.namespace,
            # the webhook as the chart's Deployment configures it
            f"--webhook-namespace={release.namespace}",
            f"--webhook-configuration={release.fullname}",
            f"--webhook-service={release.fullname}",
            f"--webhook-cert-secret={release.fullname}-webhook-cert",
        ],
        webhook=True,
    )
    operator.start()
    try:
        docs = release.render("--show-only", "templates/tests/test-operator.yaml")
        account = find(docs, "ServiceAccount")
        kubectl(kubeconfig, "apply", "-f", "-", input_text=json.dumps(account))
        token = kubectl(
            kubeconfig,
            "create",
            "token",
            account["metadata"]["name"],
            "-n",
            release.namespace,
            "--duration=10m",
        ).stdout.strip()
        secrets = tmp_path / "serviceaccount"
        secrets.mkdir()
        (secrets / "token").write_text(token)
        (secrets / "ca.crt").write_bytes(control_plane.ca_path.read_bytes())

        (container,) = find(docs, "Pod")["spec"]["containers"]
        assert container["command"][0] == "python"
        argv = [sys.executable, *container["command"][1:], *container["args"]]
        base = {e["name"]: e["value"] for e in container["env"]}
        env = base | {
            "HEALTH_URL": f"http://127.0.0.1:{operator.health_port}/healthz",
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(control_plane.port),
            "SERVICE_ACCOUNT_DIR": str(secrets),
            "ATTEMPTS": "1",
        }

        def check(**override: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                argv, env=env | override, capture_output=True, text=True, timeout=60, check=False
            )

        passed = check()
        assert passed.returncode == 0, passed.stdout + passed.stderr
        assert "operator healthy" in passed.stdout
        assert "custom resources served" in passed.stdout
        # and it can fail: no operator, or a group without the resources
        down = check(HEALTH_URL="http://127.0.0.1:9/healthz")
        assert down.returncode != 0
        assert "FAIL" in down.stderr
        missing = check(API_GROUP_VERSION="apps/v1")
        assert missing.returncode != 0
        assert "not served by the API server" in missing.stderr
        assert operator.alive

        # the chart's RBAC is enough for the webhooks too: its Secret made, both caBundles set
        def patched() -> bool:
            configs = [
                json.loads(kubectl(kubeconfig, "get", kind, release.fullname, "-o", "json").stdout)
                for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration")
            ]
            return all(h["clientConfig"].get("caBundle") for c in configs for h in c["webhooks"])

        wait_for(patched, timeout=30, what="the operator to patch its caBundle")
        kubectl(
            kubeconfig, "get", "secret", f"{release.fullname}-webhook-cert", "-n", release.namespace
        )
        forbidden = [line for line in operator.log().splitlines() if "Forbidden" in line]
        assert not forbidden, forbidden[:3]
    finally:
        operator.stop()


# --- upgrade and uninstall ------------------------------------------------------------


def test_upgrade_then_uninstall_leaves_nothing(
    kubeconfig: Path, kube_api: Any, helm_cli: Helm
) -> None:
    life = new_release(kube_api, helm_cli.with_kubeconfig(kubeconfig))
    try:
        life.install()
        full = life.fullname
        life.helm.run(
            "upgrade",
            life.name,
            str(CHART),
            "--namespace",
            life.namespace,
            "--reuse-values",
            "--set",
            "operator.logLevel=debug",
            "--set",
            "uploader.batchSize=10",
        )
        history = json.loads(
            life.helm.run("history", life.name, "-n", life.namespace, "-o", "json").stdout
        )
        assert [(h["revision"], h["status"]) for h in history] == [
            (1, "superseded"),
            (2, "deployed"),
        ]
        deploy = json.loads(
            kubectl(
                kubeconfig, "get", "deployment", full, "-n", life.namespace, "-o", "json"
            ).stdout
        )
        args = container_args(deploy)
        assert "--log-level=debug" in args
        assert "--batch-size=10" in args
        assert f"--uploader-namespace={life.uploader_namespace}" in args  # reused

        assert release_objects(kubeconfig, life.name)  # sanity: the selector finds them
        out = life.uninstall()
        assert out.returncode == 0, out.stderr
        assert life.helm.run("list", "-n", life.namespace, "-q").stdout.strip() == ""
        helm_records = kubectl(
            kubeconfig,
            "get",
            "secrets",
            "-n",
            life.namespace,
            "-l",
            f"owner=helm,name={life.name}",
            "-o",
            "name",
        ).stdout
        assert helm_records.strip() == ""

        def nothing_left() -> bool:
            # The uploader namespace is deleted, but without a controller-manager it stays
            # Terminating: that is the only object allowed to remain.
            left = [
                n
                for n in release_objects(kubeconfig, life.name)
                if n != f"namespace/{life.uploader_namespace}"
            ]
            return not left

        wait_for(nothing_left, timeout=30, what="release objects to disappear")
        ns = kubectl(
            kubeconfig, "get", "namespace", life.uploader_namespace, "-o", "json", check=False
        )
        assert ns.returncode != 0 or json.loads(ns.stdout)["metadata"]["deletionTimestamp"]
        # CRDs are never removed by helm: recordings outlive the release
        for crd in CRDS:
            kubectl(kubeconfig, "get", "crd", crd)
    finally:
        cleanup(kube_api, life)
