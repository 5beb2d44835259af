"""A real Kubernetes API for tests: etcd plus kube-apiserver on loopback, no kubelet.

Like controller-runtime's envtest: RBAC on, client-certificate authentication, Pod
Security admission built in; no scheduler, controller-manager or nodes. Use fresh
namespaces per test and never wait for their deletion.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import ssl
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from kubernetes.config import new_client_from_config

from tests.bed import binaries, certs
from tests.bed.processes import ManagedProcess, free_port, wait_until

SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
ADMIN_USER = "voicevault-admin"
ADMIN_GROUPS = ["system:masters"]


class ControlPlane:
    """etcd + kube-apiserver in ``workdir``; ``start()`` or use as a context manager."""

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        ready_timeout: float = 90.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self._owns_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="voicevault-cp-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.port = free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        self._pki = self.workdir / "pki"
        self.ca = certs.create_ca(self._pki)
        self.ca_path = self.ca.cert
        self._serving = certs.issue_serving_cert(self.ca, self._pki)
        self._sa = certs.create_service_account_keys(self._pki)
        self._admin = certs.issue_client_cert(self.ca, self._pki, ADMIN_USER, ADMIN_GROUPS, "admin")
        self._etcd: ManagedProcess | None = None
        self._apiserver: ManagedProcess | None = None
        self.admin_kubeconfig = self._write_kubeconfig(
            self.workdir / "admin.kubeconfig", self._admin
        )

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> ControlPlane:
        """Start etcd and the apiserver, wait for /readyz, write ``admin.kubeconfig``."""
        apiserver_bin = binaries.kube_apiserver()  # build first: may take minutes cold
        try:
            self._start_etcd()
            self._start_apiserver(apiserver_bin)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the apiserver, then etcd; remove the workdir only if we created it."""
        for proc in (self._apiserver, self._etcd):
            if proc is not None:
                proc.stop(self.stop_timeout)
        self._apiserver = self._etcd = None
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def restart_apiserver(self) -> None:
        """Stop and start the apiserver on the same etcd data, port and certificates."""
        if self._apiserver is not None:
            self._apiserver.stop(self.stop_timeout)
        self._start_apiserver(binaries.kube_apiserver())

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- etcd ------------------------------------------------------------------------

    def _start_etcd(self) -> None:
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        argv = [
            str(binaries.etcd()),
            "--name=default",
            f"--data-dir={self.workdir / 'etcd-data'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            "--unsafe-no-fsync",  # test data: speed over durability
        ]
        self._etcd = ManagedProcess(argv, self.workdir / "etcd.log")
        wait_until(
            lambda: _http_ok(f"{client}/health"),
            timeout=self.ready_timeout,
            what="etcd /health",
            process=self._etcd,
        )

    # --- kube-apiserver --------------------------------------------------------------

    def _apiserver_argv(self, binary: Path) -> list[str]:
        return [
            str(binary),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={self._serving.cert}",
            f"--tls-private-key-file={self._serving.key}",
            f"--client-ca-file={self.ca_path}",
            "--authorization-mode=RBAC",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            f"--service-account-issuer={self.server}",
            f"--service-account-key-file={self._sa.cert}",
            f"--service-account-signing-key-file={self._sa.key}",
            "--allow-privileged=true",
            "--disable-admission-plugins=ServiceAccount",  # no controller-manager
            "--enable-priority-and-fairness=false",
        ]

    def _start_apiserver(self, binary: Path) -> None:
        log = self.workdir / "kube-apiserver.log"
        self._apiserver = ManagedProcess(self._apiserver_argv(binary), log)
        context = self._ssl_context(self._admin)
        wait_until(
            lambda: _http_ok(f"{self.server}/readyz", context),
            timeout=self.ready_timeout,
            what="kube-apiserver /readyz",
            process=self._apiserver,
            interval=0.25,
        )

    # --- clients ---------------------------------------------------------------------

    @property
    def apiserver_pid(self) -> int:
        assert self._apiserver is not None, "not started"
        return self._apiserver.pid

    @property
    def etcd_pid(self) -> int:
        assert self._etcd is not None, "not started"
        return self._etcd.pid

    def admin_context(self) -> ssl.SSLContext:
        """TLS to the apiserver as the admin (client certificate), for raw HTTP clients."""
        return self._ssl_context(self._admin)

    def metrics(self) -> str:
        """The apiserver's own /metrics, read as the admin."""
        url = f"{self.server}/metrics"
        with urllib.request.urlopen(url, context=self.admin_context(), timeout=30) as r:  # noqa: S310
            return str(r.read().decode())

    def _ssl_context(self, client: certs.CertPair) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_path))
        context.load_cert_chain(str(client.cert), str(client.key))
        return context

    def _write_kubeconfig(
        self, path: Path, client: certs.CertPair, user: str = "admin", server: str | None = None
    ) -> Path:
        return write_kubeconfig(path, server or self.server, self.ca_path, client, user)

    def kubeconfig_for(self, user: str, groups: list[str], server: str | None = None) -> Path:
        """Kubeconfig authenticating as ``user`` in ``groups`` (no RBAC granted here),
        reaching the apiserver at ``server`` (a relay in front of it) if given."""
        digest = hashlib.sha256(repr((user, sorted(groups))).encode()).hexdigest()[:10]
        slug = f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', user)[:40]}-{digest}"
        pair = certs.issue_client_cert(self.ca, self.workdir / "users", user, groups, slug)
        name = slug if server is None else f"{slug}-via-{server.rsplit(':', 1)[-1]}"
        return self._write_kubeconfig(
            self.workdir / "users" / f"{name}.kubeconfig", pair, slug, server
        )


def write_kubeconfig(
    path: Path, server: str, ca_path: Path, client: certs.CertPair, user: str = "admin"
) -> Path:
    """A kubeconfig for ``server`` that authenticates with ``client``'s certificate."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "voicevault-test",
                "cluster": {"server": server, "certificate-authority": str(ca_path)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {"client-certificate": str(client.cert), "client-key": str(client.key)},
            }
        ],
        "contexts": [{"name": user, "context": {"cluster": "voicevault-test", "user": user}}],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def api_client(kubeconfig: Path) -> Any:
    """``kubernetes.client.ApiClient`` for ``kubeconfig`` (caller closes it)."""
    load: Callable[..., Any] = new_client_from_config  # untyped in some client versions
    return load(config_file=str(kubeconfig))


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:  # noqa: S310
            return bool(response.status == 200)
    except urllib.error.URLError:
        return False
