"""The journey helpers of :class:`~tests.bed.stack.Stack` on the real node.

Installed as a user installs it: ``helm install charts/voicevault`` with the image built
from the project's Dockerfile, the operator in its pod (in-cluster config), uploader pods
as real containers (the chart's UID, the real hostPath, read-only root), the release
namespace labelled Pod Security ``restricted`` and the uploader namespace ``privileged``
by the chart. S3 and the callback receiver listen on the bridge address so pods reach them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

from tests.bed import binaries
from tests.bed.realnode import NODE_NAME, RealNode
from tests.bed.s3_common import S3Server
from tests.bed.stack import Stack
from tests.support.kube import wait_for
from voicevault import API_GROUP

RELEASE = "voicevault"
RELEASE_NAMESPACE = "voicevault-system"
UPLOADER_NAMESPACE = "voicevault-uploads"
CHART = Path(__file__).resolve().parents[2] / "charts" / "voicevault"
PSA_RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
# Faster than production, so journeys take seconds: the same flags the stand-in stack uses.
OPERATOR_ARGS = ["--poll-interval=0.3", "--progress-interval=1", "--resync-interval=3"]
MEDIA_UID = 10001  # the chart's default uploader.runAsUser


class ClusterStack(Stack):
    """A helm release on :class:`RealNode`; accounts and recordings as in ``Stack``."""

    def __init__(self, node: RealNode, s3: S3Server, workdir: Path) -> None:
        # Stack.__init__ would start a local operator and the stand-in kubelet: not here.
        self.node = node
        self.s3 = s3
        self.workdir = workdir
        self.nodes = (NODE_NAME,)
        self.api = node.api()
        self.core = k8s.CoreV1Api(self.api)
        self.custom = k8s.CustomObjectsApi(self.api)
        self.apps = k8s.AppsV1Api(self.api)
        self.secrets: set[str] = set()
        self.host_path = node.root / "recordings"
        self.media_uid = MEDIA_UID
        self.helm_home = workdir / "helm"

    # -- helm ------------------------------------------------------------------------

    def helm(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HELM_", "KUBECONFIG"))}
        for name in ("CACHE", "CONFIG", "DATA"):
            env[f"HELM_{name}_HOME"] = str(self.helm_home / name.lower())
        env["KUBECONFIG"] = str(self.node.admin_kubeconfig)
        done = subprocess.run(
            [str(binaries.helm()), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done

    def chart_values(self, *extra: str) -> list[str]:
        repository, tag = self.node.project_image.rsplit(":", 1)
        sets = [
            f"image.repository={repository}",
            f"image.tag={tag}",
            "image.pullPolicy=Never",
            f"uploader.namespace={UPLOADER_NAMESPACE}",
            "uploader.createNamespace=true",
            f"uploader.recordingsHostPath={self.host_path}",
            "uploader.podStartTimeout=60",
            "operator.extraArgs={" + ",".join(OPERATOR_ARGS) + "}",
            *extra,
        ]
        out: list[str] = []
        for item in sets:
            out += ["--set", item]
        return out

    def install(self, *extra: str) -> Stack:
        # the recording service owns its recordings directory (the uploader keeps its
        # resume state there, and deletes files in it)
        self.host_path.mkdir(parents=True, exist_ok=True)
        os.chown(self.host_path, MEDIA_UID, MEDIA_UID)
        self._ensure_namespace(RELEASE_NAMESPACE, PSA_RESTRICTED)
        self.helm(
            "install",
            RELEASE,
            str(CHART),
            "--namespace",
            RELEASE_NAMESPACE,
            *self.chart_values(*extra),
            "--wait",
            "--timeout",
            "4m",
        )
        self.node.wait_service_account(UPLOADER_NAMESPACE)
        return self

    def upgrade(self, *extra: str) -> None:
        self.helm(
            "upgrade",
            RELEASE,
            str(CHART),
            "--namespace",
            RELEASE_NAMESPACE,
            *self.chart_values(*extra),
            "--wait",
            "--timeout",
            "4m",
        )

    def uninstall(self) -> None:
        self.helm("uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE, "--wait")

    def reinstall(self) -> None:
        """Install again after a test uninstalled the release (or left it half-upgraded)."""
        if RELEASE in self.helm("list", "-q", "--namespace", RELEASE_NAMESPACE).stdout.split():
            self.upgrade()
        else:
            wait_for(
                lambda: not self._namespace_exists(UPLOADER_NAMESPACE),
                timeout=180,
                what=f"namespace {UPLOADER_NAMESPACE} deleted",
            )
            self.install()
        self.wait_operator_ready()

    def _namespace_exists(self, name: str) -> bool:
        try:
            self.core.read_namespace(name)
        except k8s.ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    @contextlib.contextmanager
    def values(self, *extra: str) -> Iterator[None]:
        """The release upgraded with ``extra`` values, then back to the defaults."""
        self.upgrade(*extra)
        self.wait_operator_ready()
        try:
            yield
        finally:
            self.upgrade()
            self.wait_operator_ready()

    @contextlib.contextmanager
    def image_removed(self) -> Iterator[None]:
        """The project image gone from the node (a node the image never reached), then back.

        The running operator keeps its container; only new pods need the image.
        """
        image = self.node.images["voicevault"]
        self.node.remove_image(image.ref)
        try:
            yield
        finally:
            self.node.import_image(image)

    def start(self) -> Stack:
        return self.install()

    def stop(self) -> None:
        self.helm("uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE, check=False)
        self.api.close()

    # -- the operator pod --------------------------------------------------------------

    def operator_pods(self) -> list[Any]:
        pods: list[Any] = self.core.list_namespaced_pod(
            RELEASE_NAMESPACE, label_selector="app.kubernetes.io/component=operator"
        ).items
        return pods

    def operator_pod(self) -> Any:
        """The replica holding the leader Lease (the one that acts), else any running one."""
        pods = self.operator_pods()
        running = [
            p for p in pods if p.status.phase == "Running" and not p.metadata.deletion_timestamp
        ]
        if not running:
            raise AssertionError(f"no running operator pod: {[p.status.phase for p in pods]}")
        leader = self.lease_holder()
        return next((p for p in running if p.metadata.name == leader), running[0])

    def lease_holder(self) -> str | None:
        try:
            lease = k8s.CoordinationV1Api(self.api).read_namespaced_lease(
                "voicevault-operator", RELEASE_NAMESPACE
            )
        except k8s.ApiException:
            return None
        return lease.spec.holder_identity if lease.spec else None

    def wait_operator_ready(self, timeout: float = 120) -> Any:
        """Every replica of the current release Ready, none of an older one left (a rolling
        update is over), and one of them holding the Lease: the one returned."""

        def ready() -> Any:
            if not self._rolled_out():
                return None
            pods = self.operator_pods()
            if not pods or any(p.metadata.deletion_timestamp for p in pods):
                return None
            for pod in pods:
                statuses = pod.status.container_statuses or []
                if not statuses or not all(s.ready for s in statuses):
                    return None
            leader = self.lease_holder()
            return next((p for p in pods if p.metadata.name == leader), None)

        return wait_for(ready, timeout=timeout, what="the operator rolled out and leading")

    def _rolled_out(self) -> bool:
        """The Deployment's controller has seen its spec and runs only pods of it: helm's
        --wait returns once the new pods are Ready, when an old one may still be running."""
        deployment: Any = self.apps.read_namespaced_deployment(RELEASE, RELEASE_NAMESPACE)
        spec, status = deployment.spec, deployment.status
        return bool(
            (status.observed_generation or 0) >= (deployment.metadata.generation or 0)
            and status.replicas == status.updated_replicas == spec.replicas
            and (status.ready_replicas or 0) == spec.replicas
            and len(self.operator_pods()) == spec.replicas
        )

    def operator_metrics(self) -> str:
        pod = self.operator_pod()
        url = f"http://{pod.status.pod_ip}:8080/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode())

    def operator_log(self) -> str:
        return self.node.kubectl(
            "logs", "-n", RELEASE_NAMESPACE, "deploy/voicevault", "--tail=-1", check=False
        )

    def diagnose(self) -> str:
        """Pods of the release and of the uploads, their states, and the last log lines."""
        parts = [self.node.kubectl("get", "pods", "-A", "-o", "wide", check=False)]
        pods: list[Any] = self.uploader_pods()
        for pod in pods[-3:]:
            name = pod.metadata.name
            parts.append(
                self.node.kubectl(
                    "get",
                    "pod",
                    "-n",
                    UPLOADER_NAMESPACE,
                    name,
                    "-o",
                    "jsonpath={.status}",
                    check=False,
                )
            )
            parts.append(
                self.node.kubectl("logs", "-n", UPLOADER_NAMESPACE, name, "--tail=20", check=False)
            )
        parts.append(self.operator_log()[-6000:])
        return "\n".join(parts)

    # -- media on the node -------------------------------------------------------------

    def media_file(self, node: str, namespace: str, rel: str) -> Path:
        del node  # one node: the hostPath is this machine's directory
        return self.host_path / namespace / rel

    def put_media(self, node: str, namespace: str, rel: str, data: bytes) -> Path:
        """Write the file as the recording service would: owned by its UID, folders too."""
        path = self.media_file(node, namespace, rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        uid = self.media_uid
        for item in [path, *path.relative_to(self.host_path).parents]:
            target = self.host_path / item if item != path else path
            if target != self.host_path:
                os.chown(target, uid, uid)
        return path

    def uploader_pods(self) -> list[k8s.V1Pod]:
        return list(self.core.list_namespaced_pod(UPLOADER_NAMESPACE).items)

    def batch_secrets(self) -> list[k8s.V1Secret]:
        return list(
            self.core.list_namespaced_secret(
                UPLOADER_NAMESPACE, label_selector="app.kubernetes.io/component=uploader"
            ).items
        )

    def run_pod(self, namespace: str, name: str, spec: dict[str, Any], timeout: float = 120) -> str:
        """Create a pod, wait for it to end, return its log (raise if it failed)."""
        body: Any = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}
        self.core.create_namespaced_pod(namespace, body)

        def ended() -> str | None:
            pod: Any = self.core.read_namespaced_pod(name, namespace)
            phase = pod.status.phase
            return phase if phase in ("Succeeded", "Failed") else None

        phase = wait_for(ended, timeout=timeout, what=f"pod {namespace}/{name} to end")
        log = str(self.core.read_namespaced_pod_log(name, namespace))
        if phase != "Succeeded":
            raise AssertionError(f"pod {name} {phase}:\n{log}")
        return log

    def retry_in_pod(self, namespace: str, name: str) -> str:
        """``voicevault retry NAME`` in a pod of the account's namespace, in-cluster config,
        with a ServiceAccount allowed only to read and annotate Recordings."""
        account = "voicevault-retry"
        rbac = k8s.RbacAuthorizationV1Api(self.api)
        role: Any = {
            "metadata": {"name": account},
            "rules": [
                {
                    "apiGroups": [API_GROUP],
                    "resources": ["recordings"],
                    "verbs": ["get", "list", "patch"],
                }
            ],
        }
        binding: Any = {
            "metadata": {"name": account},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
            "subjects": [{"kind": "ServiceAccount", "name": account}],
        }
        service_account: Any = {"metadata": {"name": account}}
        with contextlib.suppress(k8s.ApiException):  # already there from an earlier retry
            self.core.create_namespaced_service_account(namespace, service_account)
            rbac.create_namespaced_role(namespace, role)
            rbac.create_namespaced_role_binding(namespace, binding)
        spec = {
            "restartPolicy": "Never",
            "serviceAccountName": account,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 10001,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "retry",
                    "image": self.node.project_image,
                    "imagePullPolicy": "Never",
                    "args": ["retry", name],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        }
        return self.run_pod(namespace, f"retry-{uuid.uuid4().hex[:6]}", spec)
