"""A real one-node Kubernetes cluster: kubelet, containerd (runc), kube-proxy, CNI bridge.

Beside the stand-in kubelet (:mod:`tests.bed.kubelet`) for the tiers that need real
containers: images, users, ``securityContext``, limits, the projected token, in-cluster
config. Everything runs as child processes under a per-run root; only containerd's image
store is kept between runs (``$VOICEVAULT_CACHE/realnode-containerd``), so images are
imported once.

Network rule: servers bind to 127.0.0.1 or the bridge address 10.88.0.1 only; pods get
no default route, no masquerade to the outside, and FORWARD drops the external
interface (inserted before anything starts, put back at position 1 once kube-proxy has
prepended its own jumps). One node per machine: a machine-wide lock, and every start
first removes what an interrupted run left behind (:func:`clean_leftovers`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from kubernetes import client as k8s

from tests.bed import binaries, certs, debian, images
from tests.bed.controlplane import api_client, write_kubeconfig
from tests.bed.mounts import unmount_under
from tests.bed.processes import ManagedProcess, ServerStartError, free_port, wait_until

BRIDGE = "cni0"
BRIDGE_IP = "10.88.0.1"
POD_CIDR = "10.88.0.0/16"
SERVICE_CIDR = "10.96.0.0/24"
KUBERNETES_SERVICE_IP = "10.96.0.1"
NODE_NAME = "rnode"
APISERVER_PORT = 6443
KUBELET_PORT = 10250
CLUSTER_DOMAIN = "cluster.local"

RUNS_DIR = Path("/var/tmp/voicevault-realnode")
STATE_FILE = Path("/run/voicevault-realnode.json")
LOCK_FILE = Path("/run/lock/voicevault-realnode.lock")
RULE_COMMENT = "voicevault-realnode"
# Changed by the kubelet (the first three) and by the CNI bridge plugin (ip_forward).
SYSCTLS = ("vm.overcommit_memory", "kernel.panic", "kernel.panic_on_oops", "net.ipv4.ip_forward")
# Paths kubelet 1.32 and containerd 1.6 use whatever they are configured with.
HARD_CODED_PATHS = (
    Path("/var/lib/kubelet"),
    Path("/var/log/pods"),
    Path("/usr/libexec/kubernetes"),
    Path("/run/containerd"),
    Path("/var/lib/cni"),
)
RUNC = "/usr/sbin/runc"
LOCK_TIMEOUT_S = 45 * 60
IPTABLES = ("iptables", "ip6tables")


class RealNodeError(RuntimeError):
    """The node could not be set up or torn down; the message says which step."""


def _sh(argv: Sequence[str | os.PathLike[str]], *, check: bool = True, timeout: float = 60) -> str:
    done = subprocess.run(
        [os.fspath(a) for a in argv], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise RealNodeError(f"{' '.join(map(str, argv))}: exit {done.returncode}\n{done.stderr}")
    return done.stdout


def external_interfaces() -> list[str]:
    """Interfaces with a default route: where forwarded traffic must never go."""
    out = _sh(["ip", "-j", "route", "show", "default"], check=False)
    devs = {r["dev"] for r in json.loads(out or "[]") if "dev" in r}
    return sorted(devs) or ["eth0"]


# --- leftovers and teardown (shared: a crashed run is cleaned by the next start) -------


def _read_sysctl(name: str) -> str | None:
    path = Path("/proc/sys") / name.replace(".", "/")
    return path.read_text().strip() if path.exists() else None


def _write_sysctl(name: str, value: str) -> None:
    path = Path("/proc/sys") / name.replace(".", "/")
    with contextlib.suppress(OSError):
        path.write_text(value)


def _pids_mentioning(needles: Sequence[str]) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(n in cmdline for n in needles):
            pids.append(int(proc.name))
    return pids


def _kill_pids(pids: Sequence[int], grace: float = 5.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _kubepods_cgroups() -> list[Path]:
    found = []
    for controller in Path("/sys/fs/cgroup").iterdir():
        top = controller / "kubepods"
        if top.is_dir():
            found += [Path(d) for d, _, _ in os.walk(top)]
    return found


def _kill_pod_processes() -> None:
    pids: set[int] = set()
    for group in _kubepods_cgroups():
        with contextlib.suppress(OSError):
            pids |= {int(p) for p in (group / "cgroup.procs").read_text().split()}
    _kill_pids(sorted(pids), grace=2.0)


def _remove_kubepods_cgroups() -> None:
    for group in sorted(_kubepods_cgroups(), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            group.rmdir()


def _iptables_rules(tool: str, table: str) -> list[str]:
    return _sh([tool, "-w", "-t", table, "-S"], check=False).splitlines()


def _delete_forward_drops(tool: str) -> None:
    for rule in _iptables_rules(tool, "filter"):
        if rule.startswith("-A FORWARD") and RULE_COMMENT in rule:
            spec = rule.split()[2:]
            _sh([tool, "-w", "-D", "FORWARD", *[s.strip('"') for s in spec]], check=False)


def _remove_kube_chains(tool: str) -> None:
    """Every jump into a ``KUBE-*`` chain from a built-in chain, then those chains."""
    for table in ("filter", "nat", "mangle"):
        rules = _iptables_rules(tool, table)
        for rule in rules:
            parts = rule.split()
            if parts[:1] == ["-A"] and not parts[1].startswith("KUBE-") and "KUBE-" in rule:
                _sh([tool, "-w", "-t", table, "-D", parts[1], *_unquote(parts[2:])], check=False)
        chains = [r.split()[1] for r in rules if r.startswith("-N KUBE-")]
        for chain in chains:
            _sh([tool, "-w", "-t", table, "-F", chain], check=False)
        for chain in chains:
            _sh([tool, "-w", "-t", table, "-X", chain], check=False)


def _unquote(parts: Sequence[str]) -> list[str]:
    """``iptables -S`` quotes comments with spaces; re-split them into one argument."""
    out: list[str] = []
    buf: list[str] | None = None
    for part in parts:
        if buf is not None:
            buf.append(part)
            if part.endswith('"'):
                out.append(" ".join(buf).strip('"'))
                buf = None
        elif part.startswith('"') and not (part.endswith('"') and len(part) > 1):
            buf = [part]
        else:
            out.append(part.strip('"'))
    return out


def clean_leftovers(state: dict[str, Any]) -> None:
    """Undo everything a run recorded in ``state``, whether it ended cleanly or not.

    Order as REALNODE §9: processes and shims, mounts deepest first, kubepods cgroups,
    the kubelet's hard-coded paths, sysctls, iptables, the bridge.
    """
    root = Path(state["root"])
    store = Path(state["containerd_root"])
    _kill_pids(_pids_mentioning([str(root)]))
    _kill_pod_processes()
    _kill_pids(_pids_mentioning([str(root)]), grace=1.0)  # shims a dying containerd left
    unmount_under([root, store, *HARD_CODED_PATHS, Path("/run/netns")])
    _remove_kubepods_cgroups()
    for path in HARD_CODED_PATHS:
        if str(path) not in state.get("preexisting", []):
            shutil.rmtree(path, ignore_errors=True)
    for name, value in state.get("sysctls", {}).items():
        if value is not None:
            _write_sysctl(name, value)
    for tool in IPTABLES:
        if shutil.which(tool):
            _delete_forward_drops(tool)
            _remove_kube_chains(tool)
    _sh(["ip", "link", "del", BRIDGE], check=False)
    shutil.rmtree(root, ignore_errors=True)


def clean_previous_run() -> None:
    """If a run's state file is still there, that run never finished its teardown."""
    if STATE_FILE.exists():
        clean_leftovers(json.loads(STATE_FILE.read_text()))
        STATE_FILE.unlink()
    elif Path(f"/sys/class/net/{BRIDGE}").exists():
        # A start that died before writing its state: nothing else of ours can exist yet.
        _sh(["ip", "link", "del", BRIDGE], check=False)


@contextlib.contextmanager
def machine_lock(timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """One real node per machine (the bridge, ports 6443/10250 and kubelet paths are fixed)."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with binaries.file_lock(
        LOCK_FILE, timeout, error=lambda _: RealNodeError(f"another real node holds {LOCK_FILE}")
    ):
        yield


# --- the node --------------------------------------------------------------------------


class RealNode:
    """The whole node; ``with RealNode() as node:`` or ``start()``/``stop()``."""

    def __init__(self, *, ready_timeout: float = 240.0) -> None:
        self.ready_timeout = ready_timeout
        self.root = Path()
        self.containerd_root = binaries.cache_dir() / "realnode-containerd"
        self.server = f"https://{BRIDGE_IP}:{APISERVER_PORT}"
        self.images: dict[str, images.Image] = {}
        self.timings: dict[str, float] = {}
        self._procs: dict[str, ManagedProcess] = {}
        self._lock: contextlib.ExitStack | None = None
        self.admin_kubeconfig = Path()
        self.ca_path = Path()

    # --- paths -----------------------------------------------------------------------

    @property
    def containerd_socket(self) -> Path:
        return self.root / "containerd" / "containerd.sock"

    @property
    def project_image(self) -> str:
        return self.images["voicevault"].ref

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    # --- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> RealNode:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _mark(self, step: str, started: float) -> None:
        self.timings[step] = round(time.monotonic() - started, 2)

    def start(self) -> RealNode:
        started = time.monotonic()
        debian.ensure_installed()
        bins = {
            "kube-apiserver": binaries.kube_apiserver(),
            "kubelet": binaries.kubelet(),
            "kube-controller-manager": binaries.kube_controller_manager(),
            "kube-scheduler": binaries.kube_scheduler(),
            "kube-proxy": binaries.kube_proxy(),
            "etcd": binaries.etcd(),
        }
        pause, base = images.pause(), images.python_base()
        self.images = {"pause": pause, "python": base, "voicevault": images.project(base)}
        self._mark("binaries+images", started)
        lock = contextlib.ExitStack()
        lock.enter_context(machine_lock())
        self._lock = lock
        try:
            clean_previous_run()
            self._setup(bins)
        except BaseException:
            self.stop()
            raise
        self._mark("start", started)
        return self

    def _setup(self, bins: dict[str, Path]) -> None:
        t0 = time.monotonic()
        RUNS_DIR.mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="run-", dir=RUNS_DIR))
        STATE_FILE.write_text(
            json.dumps(
                {
                    "root": str(self.root),
                    "containerd_root": str(self.containerd_root),
                    "sysctls": {name: _read_sysctl(name) for name in SYSCTLS},
                    "preexisting": [str(p) for p in HARD_CODED_PATHS if p.exists()],
                }
            )
        )
        (self.root / "logs").mkdir()
        self._insert_forward_drops()
        self._make_bridge()
        self._write_pki()
        self._write_configs()
        kubelet_root = self.root / "kubelet" / "root"
        kubelet_root.mkdir(parents=True)
        _sh(["mount", "--bind", kubelet_root, kubelet_root])
        _sh(["mount", "--make-rshared", kubelet_root])
        self._start("containerd", ["containerd", "--config", self.root / "containerd.toml"])
        self._start_etcd(bins["etcd"])
        self._start_apiserver(bins["kube-apiserver"])
        self._mark("apiserver ready", t0)
        self._start_controllers(bins)
        wait_until(
            lambda: self._ctr("version", check=False) != "",
            timeout=60,
            what="containerd",
            process=self._procs["containerd"],
        )
        self._clear_containerd()
        self._import_images()
        self._mark("images imported", t0)
        self._start_kubelet(bins["kubelet"])
        self._start_kube_proxy(bins["kube-proxy"])
        self._wait_node_ready()
        self._mark("node ready", t0)
        wait_until(
            lambda: self._http_ok(f"https://127.0.0.1:{self.cm_port}/healthz"),
            timeout=self.ready_timeout,
            what="kube-controller-manager healthz",
            process=self._procs["kube-controller-manager"],
        )
        self.wait_service_account("default")
        wait_until(
            lambda: self._http_ok(f"http://127.0.0.1:{self.proxy_health_port}/healthz"),
            timeout=self.ready_timeout,
            what="kube-proxy healthz",
            process=self._procs["kube-proxy"],
        )
        # kube-proxy prepends its jumps to FORWARD in its first sync (KUBE-FORWARD among
        # them): once they are there, the drops go back in front of them.
        wait_until(
            lambda: any("-j KUBE-FORWARD" in r for r in _iptables_rules("iptables", "filter")),
            timeout=self.ready_timeout,
            what="kube-proxy's FORWARD rules",
            process=self._procs["kube-proxy"],
        )
        self._insert_forward_drops()
        self._mark("ready", t0)

    def stop(self) -> None:
        """Tear down in REALNODE §9 order; leaves nothing behind, even after a failed start."""
        t0 = time.monotonic()
        try:
            if self.root != Path() and self.root.exists():
                for name in ("kube-controller-manager", "kube-scheduler"):
                    self._stop(name)
                if "kubelet" in self._procs and self._procs["kubelet"].alive:
                    with contextlib.suppress(Exception):
                        self._delete_all_pods()
                for name in ("kube-proxy", "kubelet"):
                    self._stop(name)
                if "containerd" in self._procs and self._procs["containerd"].alive:
                    with contextlib.suppress(Exception):
                        self._clear_containerd()
                for name in ("kube-apiserver", "etcd", "containerd"):
                    self._stop(name)
                if STATE_FILE.exists():
                    clean_leftovers(json.loads(STATE_FILE.read_text()))
                    STATE_FILE.unlink()
        finally:
            for proc in self._procs.values():
                proc.stop(3.0)
            self._procs.clear()
            if self._lock is not None:
                self._lock.close()
                self._lock = None
            self.timings["teardown"] = round(time.monotonic() - t0, 2)

    # --- processes -------------------------------------------------------------------

    def _start(
        self, name: str, argv: Sequence[str | os.PathLike[str]], env: dict[str, str] | None = None
    ) -> ManagedProcess:
        proc = ManagedProcess(argv, self.log(name), env=env)
        self._procs[name] = proc
        return proc

    def _stop(self, name: str, timeout: float = 15.0) -> None:
        proc = self._procs.pop(name, None)
        if proc is not None:
            proc.stop(timeout)

    def process(self, name: str) -> ManagedProcess:
        return self._procs[name]

    # --- network ---------------------------------------------------------------------

    def _insert_forward_drops(self) -> None:
        for tool in IPTABLES:
            _delete_forward_drops(tool)
            for dev in external_interfaces():
                for flag in ("-o", "-i"):
                    _sh(
                        [
                            tool,
                            "-w",
                            "-I",
                            "FORWARD",
                            "1",
                            flag,
                            dev,
                            "-m",
                            "comment",
                            "--comment",
                            RULE_COMMENT,
                            "-j",
                            "DROP",
                        ]
                    )

    def _make_bridge(self) -> None:
        _sh(["ip", "link", "add", BRIDGE, "type", "bridge"])
        _write_sysctl(f"net.ipv6.conf.{BRIDGE}.disable_ipv6", "1")
        _sh(["ip", "addr", "add", f"{BRIDGE_IP}/16", "dev", BRIDGE])
        _sh(["ip", "link", "set", BRIDGE, "up"])

    # --- PKI and configs -------------------------------------------------------------

    def _write_pki(self) -> None:
        pki = self.root / "pki"
        self.ca = certs.create_ca(pki, "realnode-ca")
        self.ca_path = self.ca.cert
        self.sa = certs.create_service_account_keys(pki)
        svc = ["kubernetes", "kubernetes.default", "kubernetes.default.svc"]
        self.serving = certs.issue_serving_cert(
            self.ca,
            pki,
            "apiserver",
            common_name="kube-apiserver",
            ips=(BRIDGE_IP, "127.0.0.1", KUBERNETES_SERVICE_IP),
            dns_names=("localhost", *svc, f"kubernetes.default.svc.{CLUSTER_DOMAIN}"),
        )
        clients = {
            "admin": ("admin", ["system:masters"]),
            "kube-controller-manager": ("system:kube-controller-manager", []),
            "kube-scheduler": ("system:kube-scheduler", []),
            "kubelet": (f"system:node:{NODE_NAME}", ["system:nodes"]),
            "kube-proxy": ("system:kube-proxy", []),
        }
        for name, (user, groups) in clients.items():
            pair = certs.issue_client_cert(self.ca, pki, user, groups, name)
            write_kubeconfig(self.root / f"{name}.kubeconfig", self.server, self.ca_path, pair)
        self.admin_kubeconfig = self.root / "admin.kubeconfig"
        self.kubelet_client = certs.issue_client_cert(
            self.ca, pki, "kube-apiserver-kubelet-client", ["system:masters"], "apiserver-kubelet"
        )
        self._admin_pair = certs.CertPair(pki / "admin.crt", pki / "admin.key")

    def _write_configs(self) -> None:
        r = self.root
        (r / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        (r / "cni" / "net.d").mkdir(parents=True)
        conflist = {
            "cniVersion": "1.0.0",
            "name": "realnode",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR, "gateway": BRIDGE_IP}]],
                        "routes": [{"dst": SERVICE_CIDR}],
                        "dataDir": str(r / "cni" / "ipam"),
                    },
                },
                {"type": "loopback"},
            ],
        }
        (r / "cni" / "net.d" / "10-realnode.conflist").write_text(json.dumps(conflist))
        c = r / "containerd"
        store = self.containerd_root
        store.mkdir(parents=True, exist_ok=True)
        (r / "containerd.toml").write_text(
            _CONTAINERD_TOML.format(
                root=store,
                state=c / "state",
                sock=self.containerd_socket,
                opt=c / "opt",
                runc_root=c / "runc-root",
                runc=RUNC,
                pause=images.PAUSE_REF,
                cni_conf=r / "cni" / "net.d",
            )
        )
        self.kubelet_health_port = free_port()
        kubelet = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": BRIDGE_IP,
            "port": KUBELET_PORT,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.kubelet_health_port,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.ca_path)},
            },
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "imageServiceEndpoint": f"unix://{self.containerd_socket}",
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": True,
            "enforceNodeAllocatable": ["pods"],
            "failSwapOn": False,
            "protectKernelDefaults": False,
            "resolvConf": str(r / "resolv.conf"),
            "staticPodPath": "",
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "maxPods": 60,
            "clusterDomain": CLUSTER_DOMAIN,
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
            "nodeStatusUpdateFrequency": "10s",
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "2%",
                "imagefs.available": "2%",
                "nodefs.inodesFree": "2%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "podLogsDir": str(r / "kubelet" / "pod-logs"),
            "volumePluginDir": str(r / "kubelet" / "volume-plugins"),
        }
        (r / "kubelet.yaml").write_text(yaml.safe_dump(kubelet))
        self.proxy_health_port = free_port()
        proxy = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(r / "kube-proxy.kubeconfig")},
            "mode": "iptables",
            "clusterCIDR": POD_CIDR,
            "hostnameOverride": NODE_NAME,
            "healthzBindAddress": f"127.0.0.1:{self.proxy_health_port}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            "nodePortAddresses": [f"{BRIDGE_IP}/32"],
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
            "iptables": {"localhostNodePorts": False, "masqueradeAll": False},
        }
        (r / "kube-proxy.yaml").write_text(yaml.safe_dump(proxy))

    # --- control plane ---------------------------------------------------------------

    def _start_etcd(self, binary: Path) -> None:
        client = f"http://127.0.0.1:{free_port()}"
        peer = f"http://127.0.0.1:{free_port()}"
        self.etcd_url = client
        proc = self._start(
            "etcd",
            [
                binary,
                f"--name={NODE_NAME}",
                f"--data-dir={self.root / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster={NODE_NAME}={peer}",
                f"--listen-metrics-urls=http://127.0.0.1:{free_port()}",
                "--unsafe-no-fsync",
            ],
        )
        wait_until(
            lambda: self._http_ok(f"{client}/health"),
            timeout=self.ready_timeout,
            what="etcd",
            process=proc,
        )

    def _start_apiserver(self, binary: Path) -> None:
        pki = self.root / "pki"
        proc = self._start(
            "kube-apiserver",
            [
                binary,
                f"--etcd-servers={self.etcd_url}",
                f"--bind-address={BRIDGE_IP}",
                f"--advertise-address={BRIDGE_IP}",
                f"--secure-port={APISERVER_PORT}",
                f"--cert-dir={pki / 'apiserver-generated'}",
                f"--tls-cert-file={self.serving.cert}",
                f"--tls-private-key-file={self.serving.key}",
                f"--client-ca-file={self.ca_path}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DOMAIN}",
                f"--service-account-key-file={self.sa.cert}",
                f"--service-account-signing-key-file={self.sa.key}",
                f"--kubelet-client-certificate={self.kubelet_client.cert}",
                f"--kubelet-client-key={self.kubelet_client.key}",
                "--kubelet-preferred-address-types=InternalIP",
                "--allow-privileged=true",
                "--profiling=false",
                "--enable-priority-and-fairness=false",
            ],
        )
        wait_until(
            lambda: self._http_ok(f"{self.server}/readyz", admin=True),
            timeout=self.ready_timeout,
            what="kube-apiserver /readyz",
            process=proc,
            interval=0.25,
        )

    def _kubeconfig_flags(self, name: str) -> list[str]:
        kc = self.root / f"{name}.kubeconfig"
        return [
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
        ]

    def _start_controllers(self, bins: dict[str, Path]) -> None:
        self.cm_port = free_port()
        self._start(
            "kube-controller-manager",
            [
                bins["kube-controller-manager"],
                *self._kubeconfig_flags("kube-controller-manager"),
                "--bind-address=127.0.0.1",
                f"--secure-port={self.cm_port}",
                "--leader-elect=false",
                f"--service-account-private-key-file={self.sa.key}",
                f"--root-ca-file={self.ca_path}",
                "--use-service-account-credentials=true",
                f"--cluster-signing-cert-file={self.ca.cert}",
                f"--cluster-signing-key-file={self.ca.key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--cluster-cidr={POD_CIDR}",
                "--allocate-node-cidrs=false",
                "--profiling=false",
            ],
        )
        self._start(
            "kube-scheduler",
            [
                bins["kube-scheduler"],
                *self._kubeconfig_flags("kube-scheduler"),
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                "--profiling=false",
            ],
        )

    def _start_kubelet(self, binary: Path) -> None:
        r = self.root
        self._start(
            "kubelet",
            [
                binary,
                f"--config={r / 'kubelet.yaml'}",
                f"--kubeconfig={r / 'kubelet.kubeconfig'}",
                f"--root-dir={r / 'kubelet' / 'root'}",
                f"--cert-dir={r / 'kubelet' / 'pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={BRIDGE_IP}",
                "--v=2",
            ],
        )

    def _start_kube_proxy(self, binary: Path) -> None:
        self._start("kube-proxy", [binary, f"--config={self.root / 'kube-proxy.yaml'}", "--v=2"])

    # --- containerd ------------------------------------------------------------------

    def _ctr(self, *args: str | os.PathLike[str], check: bool = True, timeout: float = 120) -> str:
        argv = ["ctr", "--address", self.containerd_socket, "-n", "k8s.io", *args]
        return _sh(argv, check=check, timeout=timeout)

    def _clear_containerd(self) -> None:
        """Kill and delete every container in the kept store (left by a crashed run)."""
        for task in self._ctr("tasks", "ls", "-q", check=False).split():
            self._ctr("tasks", "kill", "-s", "SIGKILL", task, check=False)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = self._ctr("tasks", "ls", check=False).splitlines()[1:]
            if not any("RUNNING" in row for row in rows):
                break
            time.sleep(0.2)
        for task in self._ctr("tasks", "ls", "-q", check=False).split():
            self._ctr("tasks", "delete", "-f", task, check=False)
        for ctr in self._ctr("containers", "ls", "-q", check=False).split():
            self._ctr("containers", "delete", ctr, check=False)

    def _import_images(self) -> None:
        present = set(self._ctr("images", "ls", "-q").split())
        wanted = {image.ref for image in self.images.values()}
        for image in self.images.values():
            if image.ref not in present:
                self._ctr("images", "import", "--all-platforms", image.archive, timeout=600)
        # Older builds of the project image would pile up in the kept store.
        for ref in present - wanted:
            if ref.startswith(f"{images.PROJECT_REPO}:"):
                self._ctr("images", "rm", ref, check=False)
        missing = wanted - set(self._ctr("images", "ls", "-q").split())
        if missing:
            raise RealNodeError(f"images not in containerd after import: {sorted(missing)}")

    def remove_image(self, ref: str) -> None:
        """Remove an image from the node (for the ErrImageNeverPull journey)."""
        self._ctr("images", "rm", ref, check=False)

    def import_image(self, image: images.Image) -> None:
        self._ctr("images", "import", "--all-platforms", image.archive, timeout=600)

    def kill_container(self, container_id: str) -> None:
        """SIGKILL a container's processes, as a crash or the kernel would."""
        self._ctr("tasks", "kill", "-s", "SIGKILL", container_id)

    # --- readiness -------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_path))
        context.load_cert_chain(str(self._admin_pair.cert), str(self._admin_pair.key))
        return context

    def _http_ok(self, url: str, *, admin: bool = False) -> bool:
        if url.startswith("https://127.0.0.1"):
            context = ssl._create_unverified_context()  # noqa: S323 - self-signed healthz
        elif url.startswith("https://"):
            context = self._ssl_context()
        else:
            context = None
        del admin
        try:
            with urllib.request.urlopen(url, timeout=3, context=context) as resp:  # noqa: S310
                return bool(resp.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def api(self) -> Any:
        """``kubernetes.client.ApiClient`` as the admin (caller closes it)."""
        return api_client(self.admin_kubeconfig)

    def _wait_node_ready(self) -> None:
        api = self.api()
        core = k8s.CoreV1Api(api)

        def ready() -> bool:
            try:
                node: Any = core.read_node(NODE_NAME)
            except k8s.ApiException:
                return False
            conds = {c.type: c.status for c in node.status.conditions or []}
            return conds.get("Ready") == "True"

        try:
            wait_until(
                ready,
                timeout=self.ready_timeout,
                what="Node Ready",
                process=self._procs["kubelet"],
                interval=0.25,
            )
        finally:
            api.close()

    def wait_service_account(self, namespace: str, timeout: float | None = None) -> None:
        """Pods are refused until a namespace's ``default`` ServiceAccount exists."""
        api = self.api()
        core = k8s.CoreV1Api(api)

        def exists() -> bool:
            try:
                core.read_namespaced_service_account("default", namespace)
            except k8s.ApiException:
                return False
            return True

        try:
            wait_until(
                exists,
                timeout=timeout or self.ready_timeout,
                what=f"ServiceAccount {namespace}/default",
                interval=0.2,
            )
        finally:
            api.close()

    def _delete_all_pods(self) -> None:
        api = self.api()
        core = k8s.CoreV1Api(api)
        try:
            pods: list[Any] = core.list_pod_for_all_namespaces().items
            for pod in pods:
                with contextlib.suppress(k8s.ApiException):
                    core.delete_namespaced_pod(
                        pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0
                    )
        finally:
            api.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = self._ctr("tasks", "ls", check=False).splitlines()[1:]
            if not any("RUNNING" in row for row in rows):
                return
            time.sleep(0.5)

    def kubectl(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        argv = [str(binaries.kubectl()), f"--kubeconfig={self.admin_kubeconfig}", *args]
        return _sh(argv, check=check, timeout=timeout)

    def listening_sockets(self) -> list[str]:
        """Local addresses of every TCP listener the node's processes own (for the rule)."""
        pids = {p.pid for p in self._procs.values()}
        out = _sh(["ss", "-Htlnp"], check=False)
        found = []
        for line in out.splitlines():
            if any(f"pid={pid}," in line for pid in pids):
                found.append(line.split()[3])
        return found


_CONTAINERD_TOML = """version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  enable_selinux = false
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        Root = "{runc_root}"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_conf}"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = ""
"""


def main() -> int:
    """``python -m tests.bed.realnode``: start the node, print timings, tear it down."""
    with RealNode() as node:
        print(json.dumps({"timings": node.timings, "listening": node.listening_sockets()}))
        print(node.kubectl("get", "nodes", "-o", "wide"))
    print(json.dumps({"teardown": node.timings["teardown"]}))
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except ServerStartError as exc:
        raise SystemExit(f"real node did not start: {exc}") from None
