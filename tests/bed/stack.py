"""The whole loop on one machine: apiserver, S3, the operator, fake nodes, accounts.

Used by the end-to-end tests and by the local demo. Everything is real except the
kubelet, which `tests.bed.kubelet.FakeKubelet` stands in for (there is no container
runtime here): it runs each uploader pod's command as a local process.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

from tests.bed import binaries
from tests.bed.controlplane import ControlPlane, api_client
from tests.bed.kubelet import FakeKubelet
from tests.bed.processes import ManagedProcess, free_port, wait_until
from tests.bed.s3_common import S3Account, S3Server
from tests.bed.tcpproxy import TcpProxy
from tests.support.keys import KeyPair, key_pair
from tests.support.kube import apply_crds, as_dict, kubectl, wait_for
from voicevault import API_GROUP, API_VERSION
from voicevault.operator.leader import LOST_LEASE_EXIT

REPO = Path(__file__).resolve().parents[2]
SYSTEM_NAMESPACE = "voicevault-system"
RELEASE = "voicevault"
HOST_PATH = "/var/lib/voicevault/recordings"
POLL_INTERVAL_S = 0.3  # the bed operator's --poll-interval
OPERATOR_USER = f"system:serviceaccount:{SYSTEM_NAMESPACE}:{RELEASE}-operator"
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2


@dataclass
class Account:
    """One tenant: a namespace with its Secret, AwsCredential and VoiceStorageSetting."""

    namespace: str
    s3: S3Account
    keys: KeyPair | None
    callback_url: str | None = None
    signing_key: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def recording_spec(node: str, media_path: str, duration: int = 7) -> dict[str, Any]:
    """A valid Recording spec for the media at `media_path` on `node`, with a new call SID."""
    return {
        "accountSid": ACCOUNT_SID,
        "callSid": "CA" + uuid.uuid4().hex,
        "source": "StartCallRecordingAPI",
        "channels": 1,
        "startTime": "2026-11-25T10:00:00Z",
        "duration": duration,
        "nodeName": node,
        "mediaPath": media_path,
    }


class OperatorProcess:
    """`voicevault operator` as a real process with its own identity and ports."""

    def __init__(
        self,
        kubeconfig: Path,
        workdir: Path,
        extra_args: list[str] | None = None,
        identity: str = "operator-0",
        relay: TcpProxy | None = None,
        *,
        webhook: bool = False,
        handoff: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.env = dict(env or {})  # on top of the harness's, minus its AWS_* and KUBECONFIG
        self.workdir = workdir
        self.identity = identity  # in the leader Lease; stable across restarts, as a pod's
        self.relay = relay
        self.lease_losses: list[datetime] = []  # when it exited on a lost Lease
        self._stopped = False
        self._supervisor: threading.Thread | None = None
        self.extra_args = list(extra_args or [])
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.webhook = webhook
        # its HTTPS port serves uploader pods asking for more work, registered or not
        self.handoff = handoff
        self.webhook_port = free_port()
        self.process: ManagedProcess | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.identity}.log"

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "voicevault",
            "operator",
            "--kubeconfig",
            str(self.kubeconfig),
            "--uploader-namespace",
            SYSTEM_NAMESPACE,
            "--uploader-service-account",
            f"{RELEASE}-uploader",
            "--recordings-host-path",
            HOST_PATH,
            "--poll-interval",
            str(POLL_INTERVAL_S),
            "--pod-start-timeout",
            "20",
            "--progress-interval",
            "1",
            "--validation-interval",
            "600",
            "--resync-interval",
            "3",
            "--metrics-port",
            str(self.metrics_port),
            "--health-port",
            str(self.health_port),
            "--bind-address",
            "127.0.0.1",
            "--log-format",
            "json",
            "--leader-election-namespace",
            SYSTEM_NAMESPACE,
            "--leader-election-identity",
            self.identity,
            *(self.webhook_args() if self.webhook or self.handoff else ["--no-webhook"]),
            *self.extra_args,
        ]

    def webhook_args(self) -> list[str]:
        """Served on loopback, called by URL; the certificate names 127.0.0.1."""
        return [
            f"--webhook-port={self.webhook_port}",
            "--webhook-bind-address=127.0.0.1",
            "--webhook-host=127.0.0.1",
            # quick to follow a test's changes to the certificate when registered
            f"--webhook-cert-check-interval={1 if self.webhook else 600}",
        ]

    @property
    def webhook_url(self) -> str:
        return f"https://127.0.0.1:{self.webhook_port}"

    def start(self) -> None:
        self._stopped = False
        self._launch()
        assert self.process is not None
        wait_until(self._healthy, timeout=60, what="operator /healthz", process=self.process)
        if self._supervisor is None:
            self._supervisor = threading.Thread(
                target=self._supervise, name=f"supervise-{self.identity}", daemon=True
            )
            self._supervisor.start()

    def _launch(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KUBECONFIG"))}
        env.setdefault("MALLOC_ARENA_MAX", "2")  # as the image sets it (Dockerfile)
        env.update(self.env)
        self.process = ManagedProcess(self.argv(), self.log_path, env=env, cwd=self.workdir)
        self.starts += 1

    def _supervise(self) -> None:
        """Start the operator again when it exits because it lost the leader Lease, as the
        kubelet restarts a pod's container. Any other exit (a crash, a kill, a stop) is
        left for the test to see."""
        while True:
            time.sleep(0.2)
            process = self.process
            if process is not None and not self._stopped and process.returncode == LOST_LEASE_EXIT:
                self.lease_losses.append(datetime.now(UTC))
                self._launch()

    def _healthy(self) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as r:
            return bool(r.status == 200)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.alive

    def stop(self) -> None:
        self._stopped = True
        if self.process is not None:
            self.process.stop(15)

    def kill(self) -> None:
        """SIGKILL, as a crash would: no cleanup handler runs."""
        if self.process is not None and self.process.alive:
            os.killpg(self.process.pid, signal.SIGKILL)
            wait_until(lambda: not self.alive, timeout=10, what="operator to die")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metrics(self) -> str:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as r:
            return str(r.read().decode())


class Stack:
    """Bring-up and helpers; `start()` once, then create accounts and recordings."""

    def __init__(
        self,
        control_plane: ControlPlane,
        s3: S3Server,
        workdir: Path,
        nodes: tuple[str, ...] = ("node-a", "node-b"),
        operator_args: list[str] | None = None,
        *,
        webhook: bool = False,
        handoff: bool = True,
        operator_env: dict[str, str] | None = None,
    ) -> None:
        self.cp = control_plane
        self.s3 = s3
        self.workdir = workdir
        self.nodes = nodes
        self.api = api_client(control_plane.admin_kubeconfig)
        self.core = k8s.CoreV1Api(self.api)
        self.custom = k8s.CustomObjectsApi(self.api)
        self.operator_args = operator_args
        self.webhook = webhook
        self.handoff = handoff
        self.operator_env = operator_env
        self.api_relay = TcpProxy(control_plane.port, port=free_port())
        self.operator = self._operator_process("operator-0", self.api_relay)
        self.standbys: list[tuple[OperatorProcess, TcpProxy]] = []
        self.kubelet = FakeKubelet(control_plane.admin_kubeconfig, workdir / "kubelet", list(nodes))
        # every secret value this stack handed out, for the leak scans
        self.secrets: set[str] = set()

    # -- bring-up ------------------------------------------------------------------------

    def start(self) -> Stack:
        apply_crds(self.cp.admin_kubeconfig)
        self._install_rbac()
        for node in self.nodes:  # a recording node has its recordings folder, files or not
            (self.kubelet.node_dir(node) / HOST_PATH.lstrip("/")).mkdir(parents=True, exist_ok=True)
        self.kubelet.start()
        self.api_relay.start()
        self.operator.start()
        if self.operator.webhook:
            self.wait_webhook()
        return self

    def _operator_process(self, identity: str, relay: TcpProxy) -> OperatorProcess:
        # each operator reaches the apiserver through a relay of its own: what crossed the
        # wire to it alone can be counted, and it can be cut off alone
        kubeconfig = self.cp.kubeconfig_for(
            OPERATOR_USER,
            ["system:serviceaccounts", "system:authenticated"],
            server=f"https://127.0.0.1:{relay.port}",
        )
        return OperatorProcess(
            kubeconfig,
            self.workdir,
            self.operator_args,
            identity,
            relay,
            webhook=self.webhook,
            handoff=self.handoff,
            env=self.operator_env,
        )

    def add_standby(self) -> OperatorProcess:
        """Start another replica of the operator: it stands by until it holds the Lease."""
        relay = TcpProxy(self.cp.port, port=free_port()).start()
        standby = self._operator_process(f"operator-{len(self.standbys) + 1}", relay)
        standby.start()
        self.standbys.append((standby, relay))
        return standby

    def drop_standbys(self) -> None:
        for standby, relay in self.standbys:
            standby.stop()
            relay.stop()
        self.standbys.clear()

    def stop(self) -> None:
        self.drop_standbys()
        self.operator.stop()
        self.api_relay.stop()
        self.kubelet.stop()
        self.api.close()

    def _install_rbac(self) -> None:
        self._ensure_namespace(
            SYSTEM_NAMESPACE, {"pod-security.kubernetes.io/enforce": "privileged"}
        )
        webhook_files = (
            [
                "--show-only",
                "templates/webhook.yaml",
                "--set",
                f"webhook.url={self.operator.webhook_url}",
            ]
            if self.operator.webhook
            else []
        )
        rendered = subprocess.run(
            [
                str(binaries.helm()),
                "template",
                RELEASE,
                str(REPO / "charts" / "voicevault"),
                "--namespace",
                SYSTEM_NAMESPACE,
                "--show-only",
                "templates/rbac-operator.yaml",
                "--show-only",
                "templates/rbac-uploader.yaml",
                *webhook_files,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        kubectl(self.cp.admin_kubeconfig, "apply", "-f", "-", input_text=rendered)

    def wait_webhook(self, timeout: float = 30) -> None:
        """Until the API server calls the webhook with the operator's CA: a dry run refused."""
        probe = {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": "VoiceStorageSetting",
            "metadata": {"name": "default"},
            "spec": {
                "externalStorage": {
                    "bucketUrl": "https://not-aws.example/probe",
                    "credentialRef": {"name": "probe"},
                }
            },
        }
        seen: list[str] = []

        def refused_by_it() -> bool:
            try:
                self.custom.create_namespaced_custom_object(
                    API_GROUP,
                    API_VERSION,
                    SYSTEM_NAMESPACE,
                    "voicestoragesettings",
                    probe,
                    dry_run="All",
                )
            except k8s.ApiException as exc:
                seen[:] = [str(exc.body)[:300]]
                return exc.status == 422 and "denied the request" in str(exc.body)
            return False

        try:
            wait_for(refused_by_it, timeout=timeout, what="the admission webhook to answer")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last answer: {seen}") from None

    def _ensure_namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        try:
            self.core.create_namespace(
                k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name, labels=labels))
            )
        except k8s.ApiException as exc:
            if exc.status != 409:
                raise

    # -- accounts --------------------------------------------------------------------------

    def add_account(
        self,
        *,
        namespace: str | None = None,
        encrypted: bool = False,
        endpoint: str | None = None,
        callback_url: str | None = None,
        signing_key: str | None = None,
        retry: dict[str, int] | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        wait_ready: bool = True,
        metadata: bool = False,
    ) -> Account:
        namespace = namespace or f"acct-{uuid.uuid4().hex[:8]}"
        self._ensure_namespace(namespace)
        bucket = self.s3.add_bucket(f"rec-{uuid.uuid4().hex[:12]}", "calls/")
        pair = key_pair() if encrypted else None
        secret_data = {
            "AWS_ACCESS_KEY_ID": bucket.access_key_id,
            "AWS_SECRET_ACCESS_KEY": secret_access_key or bucket.secret_access_key,
        }
        secret_ref: dict[str, str] = {"name": "s3-writer-keys"}
        if session_token:
            secret_data["AWS_SESSION_TOKEN"] = session_token
            secret_ref["sessionTokenKey"] = "AWS_SESSION_TOKEN"
        if signing_key:
            secret_data["authToken"] = signing_key
        self.core.create_namespaced_secret(
            namespace,
            k8s.V1Secret(
                metadata=k8s.V1ObjectMeta(name="s3-writer-keys"),
                data={k: base64.b64encode(v.encode()).decode() for k, v in secret_data.items()},
            ),
        )
        self.create(
            namespace,
            "awscredentials",
            {
                "metadata": {"name": "s3-writer"},
                "spec": {"secretRef": secret_ref},
            },
        )
        setting = self.setting_body(
            bucket,
            endpoint=endpoint,
            encrypted=pair,
            callback_url=callback_url,
            signing_key=bool(signing_key),
            retry=retry,
            metadata=metadata,
        )
        self.create(namespace, "voicestoragesettings", setting)
        account = Account(namespace, bucket, pair, callback_url, signing_key)
        self.secrets.update(v for k, v in secret_data.items() if k != "AWS_ACCESS_KEY_ID")
        if wait_ready:
            self.wait_condition(namespace, "voicestoragesettings", "default", "Ready")
        return account

    def setting_body(
        self,
        bucket: S3Account,
        *,
        endpoint: str | None = None,
        encrypted: KeyPair | None = None,
        callback_url: str | None = None,
        signing_key: bool = False,
        retry: dict[str, int] | None = None,
        metadata: bool = False,
    ) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "externalStorage": {
                # the customer's AWS-style URL; requests go to the local S3 (endpoint override)
                "bucketUrl": f"https://{bucket.bucket}.s3.{bucket.region}.amazonaws.com/{bucket.prefix}",
                "endpointUrl": endpoint or bucket.endpoint_url,
                "credentialRef": {"name": "s3-writer"},
            },
            "retry": retry
            or {"windowSeconds": 7200, "initialBackoffSeconds": 1, "maxBackoffSeconds": 2},
        }
        if encrypted is not None:
            spec["encryption"] = {"publicKey": encrypted.public_pem.decode()}
        if metadata:
            spec["metadataObject"] = {"enabled": True}
        if callback_url:
            spec["statusCallback"] = {"url": callback_url}
            if signing_key:
                spec["statusCallback"]["signingKeyRef"] = {
                    "name": "s3-writer-keys",
                    "key": "authToken",
                }
        return {"metadata": {"name": "default"}, "spec": spec}

    # -- objects -----------------------------------------------------------------------------

    def create(self, namespace: str, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        kind = {
            "awscredentials": "AwsCredential",
            "voicestoragesettings": "VoiceStorageSetting",
            "recordings": "Recording",
        }[plural]
        full = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": kind, **body}
        return as_dict(
            self.custom.create_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace, plural, full
            )
        )

    def get(self, namespace: str, plural: str, name: str) -> dict[str, Any]:
        return as_dict(
            self.custom.get_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace, plural, name
            )
        )

    def delete(self, namespace: str, plural: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(API_GROUP, API_VERSION, namespace, plural, name)

    def media_file(self, node: str, namespace: str, rel: str) -> Path:
        return self.kubelet.node_dir(node) / HOST_PATH.lstrip("/") / namespace / rel

    def put_media(self, node: str, namespace: str, rel: str, data: bytes) -> Path:
        path = self.media_file(node, namespace, rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def record(
        self,
        account: Account,
        name: str,
        data: bytes,
        *,
        node: str | None = None,
        callback_url: str | None = None,
        media_path: str | None = None,
    ) -> dict[str, Any]:
        """Put media on a node and create its Recording."""
        node = node or self.nodes[0]
        rel = media_path or f"2026/11/{name}.wav"
        self.put_media(node, account.namespace, rel, data)
        spec = recording_spec(node, rel)
        if callback_url:
            spec["statusCallback"] = {"url": callback_url}
        return self.create(
            account.namespace, "recordings", {"metadata": {"name": name}, "spec": spec}
        )

    def wait_phase(
        self, namespace: str, name: str, *phases: str, timeout: float = 60
    ) -> dict[str, Any]:
        seen: list[dict[str, Any]] = []

        def reached() -> dict[str, Any] | None:
            body = self.get(namespace, "recordings", name)
            seen[:] = [body.get("status") or {}]
            return body if seen[0].get("phase") in phases else None

        try:
            return wait_for(reached, timeout=timeout, what=f"{namespace}/{name} to reach {phases}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; status: {seen[0] if seen else None}") from None

    def wait_condition(
        self,
        namespace: str,
        plural: str,
        name: str,
        type_: str,
        status: str = "True",
        timeout: float = 60,
        reason: str | None = None,
    ) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            body = self.get(namespace, plural, name)
            for cond in (body.get("status") or {}).get("conditions") or []:
                if (
                    cond.get("type") == type_
                    and cond.get("status") == status
                    and reason in (None, cond.get("reason"))
                ):
                    return body
            return None

        return wait_for(reached, timeout=timeout, what=f"{plural}/{name} {type_}={status}")

    def object_bytes(self, account: Account, key: str) -> bytes:
        body: bytes = (
            self.s3.admin_client().get_object(Bucket=account.s3.bucket, Key=key)["Body"].read()
        )
        return body

    def open_uploads(self, account: Account) -> list[dict[str, Any]]:
        page = self.s3.admin_client().list_multipart_uploads(Bucket=account.s3.bucket)
        return [dict(u) for u in page.get("Uploads", [])]

    def events(self, namespace: str) -> list[k8s.CoreV1Event]:
        return list(self.core.list_namespaced_event(namespace).items)

    def wait_event_reasons(self, namespace: str, *reasons: str, timeout: float = 30) -> set[str]:
        """Events are posted in the background: wait until these reasons have appeared."""

        def seen() -> set[str] | None:
            found = {str(e.reason) for e in self.events(namespace)}
            return found if set(reasons) <= found else None

        return wait_for(seen, timeout=timeout, what=f"events {reasons} in {namespace}")

    def uploader_pods(self) -> list[k8s.V1Pod]:
        return list(self.core.list_namespaced_pod(SYSTEM_NAMESPACE).items)
