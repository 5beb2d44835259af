"""A stand-in kubelet for the test bed: runs the pods bound to its nodes as local processes.

Test/dev harness only, never shipped. The test control plane has no kubelet, so pods
pinned with ``spec.nodeName`` would stay Pending forever. ``FakeKubelet`` registers Node
objects, watches the pods bound to them, runs each container's command as a local
process group and writes pod status back the way a kubelet does: phases, container
states, termination messages, ``activeDeadlineSeconds``, graceful deletion.

Layout under ``root``::

    nodes/<node>/<hostPath without leading slash>     hostPath volumes
    pods/<namespace>_<name>_<uid>/container.log        stdout + stderr (kept)
    pods/<namespace>_<name>_<uid>/termination-log      the terminationMessagePath
    pods/<namespace>_<name>_<uid>/volumes/<volume>/    emptyDir, secret, configMap
    pods/<namespace>_<name>_<uid>/serviceaccount/      token, ca.crt, namespace
    pods/<namespace>_<name>_<uid>/kubeconfig           bearer token of the pod's account
    pids/<pid>.json                                    live process groups (kill_leftovers)

A container sees its own paths only through its arguments and environment: every value
equal to or under a ``mountPath`` (also ``--flag=<path>``) is rewritten to the local
directory. The ServiceAccount admission plugin is off, so the harness stands in for the
projected token: a TokenRequest bound to the pod, in a kubeconfig named by KUBECONFIG
(KUBERNETES_SERVICE_HOST stays unset, so ``load_incluster_config()`` falls through to it).

Processes do not survive a restarted harness: ``start()`` kills what an earlier harness
on the same root left for its nodes and reports those pods lost (ContainerStatusUnknown).
Not emulated: images (a command is required), users and securityContext, resource
limits, probes, init or sidecar containers, restarts (every pod is treated as
``restartPolicy: Never``), Node leases.

In a test::

    with FakeKubelet(control_plane.admin_kubeconfig, tmp_path / "kubelet", [node]) as kubelet:
        ...  # create pods with spec.nodeName=node; read kubelet.pod_log(namespace, name)
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import urllib3
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch

log = logging.getLogger(__name__)

HOST_IP = "127.0.0.1"
HEARTBEAT_SECONDS = 10.0
API_TIMEOUT = 15.0  # seconds, for every API request
WATCH_SECONDS = 60  # server-side timeout of one watch request
MAX_MESSAGE_BYTES = 4096  # the kubelet's limit for a termination message
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
MIN_GRACE_SECONDS = 2.0  # the kubelet never kills faster, even for a grace period of 0
STOP_GRACE_SECONDS = 2.0
STATUS_RETRY_SECONDS = 60.0
REPORT_AFTER_SECONDS = 1.0  # a Secret created just after its Pod is not a failure yet
POLL_SECONDS = 0.1
MAX_BACKOFF_SECONDS = 2.0  # retries of a local apiserver and of pod starts are cheap
DONE_MEMORY = 4096
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
MERGE_PATCH = "application/merge-patch+json"
READY_FILE = "kubelet.ready"
SERVICE_ACCOUNT_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"
UNKNOWN_MESSAGE = "The container could not be located when the pod was terminated"
NOT_READY_TAINT = "node.kubernetes.io/not-ready"
# What the venv needs from the harness's own environment; nothing else leaks into a pod.
PASSTHROUGH_ENV = ("PATH", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
NODE_CAPACITY = {"cpu": "8", "memory": "16Gi", "pods": "110", "ephemeral-storage": "100Gi"}
REPO_ROOT = Path(__file__).resolve().parents[2]
_WATCH: Any = k8s_watch.Watch

_VAR_REFERENCE = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")
_LABEL_FIELD = re.compile(r"metadata\.(labels|annotations)\['(.+)'\]")


# --- small helpers -------------------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _stamp(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_stamp(value: object) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    return dt.datetime.fromisoformat(value)


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Readers never see half a file (token refresh, ready file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    tmp.replace(path)


def _api_message(exc: Any) -> str:
    """The apiserver's own message from an ApiException, else its status and reason."""
    with contextlib.suppress(TypeError, ValueError, AttributeError):
        message = json.loads(exc.body).get("message")
        if message:
            return str(message)
    return f"{exc.status} {exc.reason}"


def _expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` references: defined ones are replaced, ``$$`` is a ``$``."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "$"
        return env.get(name, match.group(0))

    return _VAR_REFERENCE.sub(substitute, value)


def _proc_starttime(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot; tells a reused pid from ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else None


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _exited(pid: int) -> bool:
    """True once the child has exited. WNOWAIT leaves it unreaped, so its pid (our process
    group id) cannot be reused before the rest of the group is killed."""
    try:
        result = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return result is not None


# --- pid files: what a SIGKILLed harness leaves behind ----------------------------------------


def _pid_dir(root: Path) -> Path:
    return root / "pids"


def _write_pidfile(root: Path, pid: int, node: str, pod: str, uid: str) -> None:
    record = {"pid": pid, "starttime": _proc_starttime(pid), "node": node, "pod": pod, "uid": uid}
    _write_atomic(_pid_dir(root) / f"{pid}.json", json.dumps(record).encode())


def _remove_pidfile(root: Path, pid: int) -> None:
    (_pid_dir(root) / f"{pid}.json").unlink(missing_ok=True)


def kill_leftovers(root: Path, nodes: Iterable[str] | None = None) -> list[int]:
    """SIGKILL the pod process groups recorded under ``root`` (only ``nodes``' if given).

    For teardown after a harness was SIGKILLed, and run by ``start()`` for its own nodes.
    A group is killed only if its leader is still the recorded process, or is gone (the
    kernel does not reuse a pid while it names a live process group). Returns the pids.
    """
    wanted = set(nodes) if nodes is not None else None
    killed: list[int] = []
    for path in sorted(_pid_dir(root).glob("*.json")):
        try:
            record = json.loads(path.read_text())
            pid = int(record["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
            continue
        if wanted is not None and record.get("node") not in wanted:
            continue
        current = _proc_starttime(pid)
        if current is None or current == record.get("starttime"):
            try:
                os.killpg(pid, signal.SIGKILL)
                killed.append(pid)
            except (ProcessLookupError, PermissionError):
                pass
        path.unlink(missing_ok=True)
    return killed


# --- kubeconfig -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Cluster:
    server: str
    ca_pem: bytes | None
    insecure: bool


def _read_cluster(kubeconfig: Path) -> _Cluster:
    """Server and CA of the kubeconfig's current context: pods get the same cluster."""
    data = yaml.safe_load(kubeconfig.read_text())
    contexts = {c["name"]: c["context"] for c in data.get("contexts") or []}
    clusters = {c["name"]: c["cluster"] for c in data.get("clusters") or []}
    current = data.get("current-context") or next(iter(contexts))
    cluster = clusters[contexts[current]["cluster"]]
    ca: bytes | None = None
    if cluster.get("certificate-authority-data"):
        ca = base64.b64decode(cluster["certificate-authority-data"])
    elif cluster.get("certificate-authority"):
        path = Path(cluster["certificate-authority"])
        ca = (path if path.is_absolute() else kubeconfig.parent / path).read_bytes()
    return _Cluster(str(cluster["server"]), ca, bool(cluster.get("insecure-skip-tls-verify")))


def _api_client(kubeconfig: Path) -> Any:
    configuration = k8s.Configuration()
    load: Any = k8s_config.load_kube_config  # typed or not depending on the client version
    load(config_file=str(kubeconfig), client_configuration=configuration)
    configuration.connection_pool_maxsize = 64  # a thread per pod shares this client
    return k8s.ApiClient(configuration)


# --- pod manifests → local paths, env, argv ---------------------------------------------------


class _StartError(Exception):
    """Why a container cannot start yet (FailedMount, CreateContainerConfigError, ...).
    The kubelet keeps retrying these while the pod is Pending."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclasses.dataclass(frozen=True)
class _PathMap:
    """Container paths → local paths, longest container path first."""

    entries: tuple[tuple[str, Path], ...]

    @classmethod
    def build(cls, entries: Iterable[tuple[str, Path]]) -> _PathMap:
        usable = [(p.rstrip("/") or "/", local) for p, local in entries if p.rstrip("/")]
        return cls(tuple(sorted(usable, key=lambda item: len(item[0]), reverse=True)))

    def _local(self, value: str) -> str:
        for path, local in self.entries:
            if value == path:
                return str(local)
            if value.startswith(path + "/"):
                return str(local / value[len(path) + 1 :])
        return value

    def rewrite(self, value: str) -> str:
        """A path equal to or under a mount, also as the value of ``--flag=<path>``."""
        mapped = self._local(value)
        if mapped != value:
            return mapped
        if value.startswith("-") and "=" in value:
            flag, _, rest = value.partition("=")
            mapped = self._local(rest)
            if mapped != rest:
                return f"{flag}={mapped}"
        return value


@dataclasses.dataclass(frozen=True)
class _Launch:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    termination_log: Path
    message_policy: str
    container: dict[str, Any]


def _field_value(pod: dict[str, Any], path: str) -> str:
    """The downward API fields a test kubelet can answer (fieldRef)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": HOST_IP,
        "status.hostIPs": HOST_IP,
        "status.podIP": HOST_IP,
        "status.podIPs": HOST_IP,
    }
    if path in simple:
        return str(simple[path] or "")
    match = _LABEL_FIELD.fullmatch(path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    raise _StartError("CreateContainerConfigError", f"fieldRef {path!r} is not supported here")


def _command(container: dict[str, Any], env: Mapping[str, str], paths: _PathMap) -> list[str]:
    """command + args, expanded and path-mapped; ``voicevault``/``python`` run in this venv."""
    command = list(container.get("command") or [])
    if not command:
        raise _StartError(
            "CreateContainerError",
            "the test kubelet runs no images: the container must set a command",
        )
    argv = [
        paths.rewrite(_expand(str(a), env)) for a in command + list(container.get("args") or [])
    ]
    if argv[0] == "voicevault":
        return [sys.executable, "-m", "voicevault", *argv[1:]]
    if argv[0] in ("python", "python3"):
        return [sys.executable, *argv[1:]]
    return argv


def _image_id(image: str) -> str:
    return "harness://sha256:" + hashlib.sha256(image.encode()).hexdigest()


def _container_base(container: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": container.get("name", ""),
        "image": container.get("image", ""),
        "imageID": "",
        "restartCount": 0,
        "ready": False,
        "started": False,
    }


def _waiting(container: dict[str, Any], reason: str, message: str | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {"reason": reason}
    if message:
        state["message"] = message
    return _container_base(container) | {"state": {"waiting": state}}


def _running(container: dict[str, Any], pid: int, started: dt.datetime) -> dict[str, Any]:
    return _container_base(container) | {
        "imageID": _image_id(container.get("image", "")),
        "containerID": f"harness://{pid}",
        "ready": True,
        "started": True,
        "state": {"running": {"startedAt": _stamp(started)}},
    }


def _terminated(
    container: dict[str, Any],
    *,
    exit_code: int,
    reason: str,
    message: str,
    started: dt.datetime,
    finished: dt.datetime,
    container_id: str | None,
) -> dict[str, Any]:
    state: dict[str, Any] = {
        "exitCode": exit_code,
        "reason": reason,
        "startedAt": _stamp(started),
        "finishedAt": _stamp(finished),
    }
    if message:
        state["message"] = message
    status = _container_base(container) | {"state": {"terminated": state}}
    if container_id:
        state["containerID"] = container_id
        status["containerID"] = container_id
        status["imageID"] = _image_id(container.get("image", ""))
    return status


def _log_tail(path: Path) -> str:
    """The kubelet's log fallback: the last 80 lines, at most the last 2048 bytes."""
    try:
        with path.open("rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - FALLBACK_LOG_BYTES))
            data = file.read()
    except OSError:
        return ""
    lines = data.splitlines(keepends=True)[-FALLBACK_LOG_LINES:]
    return b"".join(lines).decode("utf-8", errors="replace")


def _termination_message(launch: _Launch, exit_code: int) -> str:
    try:
        with launch.termination_log.open("rb") as file:
            data = file.read(MAX_MESSAGE_BYTES)
    except OSError:
        data = b""
    if not data and exit_code != 0 and launch.message_policy == "FallbackToLogsOnError":
        return _log_tail(launch.log_path)
    return data.decode("utf-8", errors="replace")


def _has_started(pod: dict[str, Any]) -> bool:
    """Started by an earlier harness: Running, or a container that ran."""
    status = pod.get("status") or {}
    if status.get("phase") == "Running":
        return True
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        if state.get("running") or state.get("terminated"):
            return True
    return False


# --- one pod ------------------------------------------------------------------------------------


class _PodWorker:
    """Runs one pod on its own thread: prepare, start, supervise, report, clean up."""

    def __init__(self, kubelet: FakeKubelet, node: str, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        self.kubelet = kubelet
        self.node = node
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.dir = kubelet.root / "pods" / f"{self.namespace}_{self.name}_{self.uid}"
        self.process: subprocess.Popen[bytes] | None = None
        self.running = False
        self._pod = pod
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._gone = threading.Event()
        self._start_time: dt.datetime | None = None
        self._token_refresh_at: float | None = None
        # condition type -> (status, lastTransitionTime): transitions keep their time
        self._conditions: dict[str, tuple[str, dt.datetime]] = {
            c["type"]: (c.get("status", ""), _parse_stamp(c.get("lastTransitionTime")) or _now())
            for c in (pod.get("status") or {}).get("conditions") or []
            if c.get("type")
        }
        self.thread = threading.Thread(
            target=self._main, name=f"pod-{self.namespace}/{self.name}", daemon=True
        )

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def pod(self) -> dict[str, Any]:
        with self._lock:
            return self._pod

    def update(self, pod: dict[str, Any]) -> None:
        with self._lock:
            self._pod = pod
        self._wake.set()

    def gone(self) -> None:
        """The Pod object was deleted (grace 0, or its deletion finished elsewhere)."""
        self._gone.set()
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def _sleep(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    # -- lifecycle -----------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("pod %s: worker failed", self.key)
            process = self.process
            if self.running and process is not None:  # nobody would supervise it any more
                _signal_group(process.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(5)
                _remove_pidfile(self.kubelet.root, process.pid)
        finally:
            self.running = False
            self.kubelet._forget(self)

    def _interruption(self) -> str | None:
        if self.kubelet._stopping.is_set():
            return "stop"
        if self._gone.is_set():
            return "gone"
        pod = self.pod
        if pod["metadata"].get("deletionTimestamp"):
            return "delete"
        seconds = pod["spec"].get("activeDeadlineSeconds")
        start = self._start_time or _parse_stamp((pod.get("status") or {}).get("startTime"))
        if seconds is None or start is None:
            return None
        return "deadline" if _now() >= start + dt.timedelta(seconds=int(seconds)) else None

    def _run(self) -> None:
        pod = self.pod
        container = (pod["spec"].get("containers") or [{}])[0]
        if _has_started(pod):
            self._report_lost(pod, container)
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        status = pod.get("status") or {}
        self._start_time = _parse_stamp(status.get("startTime")) or _now()
        if not status.get("startTime"):
            log.info("pod %s: accepted on %s", self.key, self.node)
            self._patch_status(
                self._status(
                    phase="Pending",
                    container=_waiting(container, "ContainerCreating"),
                    sandbox=False,
                )
            )
        launch = self._prepare_until_ready(container)
        if launch is not None:
            self._execute(launch)

    def _prepare_until_ready(self, container: dict[str, Any]) -> _Launch | None:
        backoff = 0.2
        first_failure: float | None = None
        reported: tuple[str, str] | None = None
        while True:
            why = self._interruption()
            if why is not None:
                self._end_before_start(why, container)
                return None
            try:
                return self._prepare()
            except _StartError as err:
                now = time.monotonic()
                first_failure = now if first_failure is None else first_failure
                if now - first_failure >= REPORT_AFTER_SECONDS and reported != (
                    err.reason,
                    err.message,
                ):
                    reported = (err.reason, err.message)
                    log.warning("pod %s: %s: %s", self.key, err.reason, err.message)
                    self._report_start_error(container, err)
            self._sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    def _report_start_error(self, container: dict[str, Any], err: _StartError) -> None:
        # The event first: whoever sees the status can already find the event.
        self.kubelet._event(self.pod, self.node, "Warning", err.reason, err.message)
        if err.reason == "FailedMount":  # volumes come before the sandbox: no pod IP yet
            status = self._status(
                phase="Pending",
                container=_waiting(container, "ContainerCreating"),
                sandbox=False,
                sandbox_reason=err.reason,
                sandbox_message=err.message,
            )
        else:
            status = self._status(
                phase="Pending", container=_waiting(container, err.reason, err.message)
            )
        self._patch_status(status)

    def _end_before_start(self, why: str, container: dict[str, Any]) -> None:
        if why == "delete":
            self.kubelet._force_delete(self.namespace, self.name, self.uid)
        elif why == "deadline":
            self._report_deadline(container, None)
            if self.pod["metadata"].get("deletionTimestamp"):
                self.kubelet._force_delete(self.namespace, self.name, self.uid)

    def _report_deadline(
        self, container: dict[str, Any], terminated: dict[str, Any] | None
    ) -> None:
        log.info("pod %s: active deadline exceeded", self.key)
        now = _now()
        if terminated is None:
            terminated = _terminated(
                container,
                exit_code=137,
                reason="ContainerStatusUnknown",
                message=UNKNOWN_MESSAGE,
                started=now,
                finished=now,
                container_id=None,
            )
        self.kubelet._event(self.pod, self.node, "Normal", "DeadlineExceeded", DEADLINE_MESSAGE)
        self._patch_status(
            self._status(
                phase="Failed",
                container=terminated,
                reason="DeadlineExceeded",
                message=DEADLINE_MESSAGE,
            )
        )

    def _report_lost(self, pod: dict[str, Any], container: dict[str, Any]) -> None:
        """A pod an earlier harness ran: its process is gone, like a container after a
        node reboot, and restartPolicy Never makes the pod Failed (or keeps its result)."""
        log.warning("pod %s: was started by an earlier harness; reporting it lost", self.key)
        now = _now()
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        terminated = next((s for s in statuses if (s.get("state") or {}).get("terminated")), None)
        if terminated is not None:
            code = int(terminated["state"]["terminated"].get("exitCode", 1))
            phase = "Succeeded" if code == 0 else "Failed"
        else:
            phase = "Failed"
            terminated = _terminated(
                container,
                exit_code=137,
                reason="ContainerStatusUnknown",
                message=UNKNOWN_MESSAGE,
                started=now,
                finished=now,
                container_id=None,
            )
        self._start_time = _parse_stamp((pod.get("status") or {}).get("startTime")) or now
        self._patch_status(self._status(phase=phase, container=terminated))
        if pod["metadata"].get("deletionTimestamp"):
            self.kubelet._force_delete(self.namespace, self.name, self.uid)

    def _execute(self, launch: _Launch) -> None:
        container = launch.container
        started = _now()
        try:
            with launch.log_path.open("ab") as log_file:
                process = subprocess.Popen(
                    launch.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=launch.env,
                    cwd=launch.cwd,
                    start_new_session=True,
                )
        except OSError as exc:  # what a runtime reports when the entrypoint cannot run
            log.warning("pod %s: cannot start %s: %s", self.key, launch.argv[0], exc)
            failed = _terminated(
                container,
                exit_code=128,
                reason="StartError",
                message=f"cannot start: {exc}",
                started=started,
                finished=_now(),
                container_id=None,
            )
            self._patch_status(self._status(phase="Failed", container=failed))
            self.kubelet._event(self.pod, self.node, "Warning", "Failed", str(exc))
            self._delete_if_deleting()
            return
        self.process = process
        self.running = True
        container_id = f"harness://{process.pid}"
        _write_pidfile(self.kubelet.root, process.pid, self.node, self.key, self.uid)
        log.info("pod %s: started pid %d: %s", self.key, process.pid, launch.argv)
        self._patch_status(
            self._status(phase="Running", container=_running(container, process.pid, started))
        )
        why = self._supervise(process)
        if why in ("stop", "gone"):
            return
        exit_code = self._reap(process)
        finished = _now()
        message = _termination_message(launch, exit_code)
        if len(message.encode()) > MAX_MESSAGE_BYTES:
            message = message.encode()[-MAX_MESSAGE_BYTES:].decode("utf-8", errors="ignore")
        terminated = _terminated(
            container,
            exit_code=exit_code,
            reason="Completed" if exit_code == 0 else "Error",
            message=message,
            started=started,
            finished=finished,
            container_id=container_id,
        )
        log.info("pod %s: exited with %d", self.key, exit_code)
        if why == "deadline":
            self._report_deadline(container, terminated)
        else:
            phase = "Succeeded" if exit_code == 0 else "Failed"
            self._patch_status(self._status(phase=phase, container=terminated))
        self._delete_if_deleting()

    def _supervise(self, process: subprocess.Popen[bytes]) -> str | None:
        """Wait for the exit, or kill on deadline/deletion; returns what interrupted it."""
        while not _exited(process.pid):
            self._refresh_token_if_due()
            why = self._interruption()
            if why == "stop":
                if self.kubelet._kill_on_stop:
                    self._kill(process, STOP_GRACE_SECONDS)
                    self._reap(process)
                else:
                    log.info("pod %s: leaving pid %d running", self.key, process.pid)
                return why
            if why == "gone":
                self._kill(process, MIN_GRACE_SECONDS)
                self._reap(process)
                return why
            if why == "deadline":
                grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
                self.kubelet._event(self.pod, self.node, "Normal", "Killing", DEADLINE_MESSAGE)
                self._kill(process, max(float(grace), MIN_GRACE_SECONDS))
                return why
            if why == "delete":
                meta = self.pod["metadata"]
                grace = meta.get("deletionGracePeriodSeconds")
                if grace is None:
                    grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
                self.kubelet._event(
                    self.pod, self.node, "Normal", "Killing", "Stopping container (pod deleted)"
                )
                self._kill(process, max(float(grace), MIN_GRACE_SECONDS))
                return why
            self._sleep(POLL_SECONDS)
        return None

    def _kill(self, process: subprocess.Popen[bytes], grace: float) -> None:
        log.info("pod %s: SIGTERM to group %d (grace %.0fs)", self.key, process.pid, grace)
        _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        capped = False
        while not _exited(process.pid) and time.monotonic() < deadline:
            if not capped and self.kubelet._stopping.is_set() and self.kubelet._kill_on_stop:
                deadline = min(deadline, time.monotonic() + STOP_GRACE_SECONDS)
                capped = True  # stop() does not wait out a long grace period
            time.sleep(0.05)
        if not _exited(process.pid):
            log.info("pod %s: SIGKILL to group %d", self.key, process.pid)
        _signal_group(process.pid, signal.SIGKILL)

    def _reap(self, process: subprocess.Popen[bytes]) -> int:
        """Kill what is left of the group (a container's processes die with it), reap."""
        _signal_group(process.pid, signal.SIGKILL)
        try:
            code = process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = -signal.SIGKILL
        self.running = False
        _remove_pidfile(self.kubelet.root, process.pid)
        return code if code >= 0 else 128 - code

    def _delete_if_deleting(self) -> None:
        if self.pod["metadata"].get("deletionTimestamp") and not self._gone.is_set():
            self.kubelet._force_delete(self.namespace, self.name, self.uid)

    # -- status -------------------------------------------------------------------------

    def _status(
        self,
        *,
        phase: str,
        container: dict[str, Any],
        sandbox: bool = True,
        sandbox_reason: str | None = None,
        sandbox_message: str | None = None,
        reason: str | None = None,
        message: str | None = None,
    ) -> dict[str, Any]:
        terminal = phase in TERMINAL_PHASES
        ready = phase == "Running" and bool(container.get("ready"))
        not_ready = "PodCompleted" if terminal else "ContainersNotReady"
        unready = None if terminal else f"containers with unready status: [{container['name']}]"
        wanted = [
            (
                "PodReadyToStartContainers",
                sandbox and not terminal,
                sandbox_reason,
                sandbox_message,
            ),
            ("Initialized", True, None, None),
            ("Ready", ready, None if ready else not_ready, None if ready else unready),
            ("ContainersReady", ready, None if ready else not_ready, None if ready else unready),
            ("PodScheduled", True, None, None),
        ]
        now = _now()
        conditions = []
        for type_, value, why, text in wanted:
            status = "True" if value else "False"
            previous = self._conditions.get(type_)
            since = previous[1] if previous is not None and previous[0] == status else now
            self._conditions[type_] = (status, since)
            condition: dict[str, Any] = {
                "type": type_,
                "status": status,
                "lastProbeTime": None,
                "lastTransitionTime": _stamp(since),
            }
            if why:
                condition["reason"] = why
            if text:
                condition["message"] = text
            conditions.append(condition)
        result: dict[str, Any] = {
            "phase": phase,
            "conditions": conditions,
            "hostIP": HOST_IP,
            "hostIPs": [{"ip": HOST_IP}],
            "startTime": _stamp(self._start_time or _now()),
            "containerStatuses": [container],
        }
        if sandbox:
            result |= {"podIP": HOST_IP, "podIPs": [{"ip": HOST_IP}]}
        if reason:
            result |= {"reason": reason, "message": message or ""}
        return result

    def _patch_status(self, status: dict[str, Any]) -> bool:
        """Merge-patch the status (lists replaced whole); the uid guards against a new pod
        of the same name. Retries transient failures (an apiserver restart) for up to
        STATUS_RETRY_SECONDS; False if the pod is gone or the status was not written."""
        body = {"metadata": {"uid": self.uid}, "status": status}
        delay = 0.2
        give_up = time.monotonic() + STATUS_RETRY_SECONDS
        attempt = 0
        while time.monotonic() < give_up:
            attempt += 1
            try:
                self.kubelet._core.patch_namespaced_pod_status(
                    self.name,
                    self.namespace,
                    body,
                    _content_type=MERGE_PATCH,
                    _request_timeout=API_TIMEOUT,
                )
            except k8s.ApiException as exc:
                if exc.status == 404:
                    return False
                if exc.status not in (409, 429) and exc.status < 500:
                    log.error("pod %s: status rejected: %s", self.key, _api_message(exc))
                    return False
                log.info("pod %s: status patch attempt %d: %s", self.key, attempt, exc.status)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                log.info("pod %s: status patch attempt %d: %s", self.key, attempt, exc)
            else:
                return True
            if self.kubelet._stopping.wait(delay):
                return False
            delay = min(delay * 2, 3.0)
        log.error("pod %s: giving up on a status patch", self.key)
        return False

    # -- preparing a start ---------------------------------------------------------------

    def _prepare(self) -> _Launch:
        pod = self.pod
        spec = pod["spec"]
        containers = spec.get("containers") or []
        if len(containers) != 1 or spec.get("initContainers"):
            raise _StartError(
                "CreateContainerError",
                "the test kubelet runs pods with exactly one container and no init containers",
            )
        container = containers[0]
        volumes = self._mount_volumes(spec)
        account_dir = self._service_account(pod)
        mounts: list[tuple[str, Path]] = []
        for mount in container.get("volumeMounts") or []:
            local = volumes.get(mount["name"])
            if local is None:
                raise _StartError("CreateContainerConfigError", f"no volume {mount['name']!r}")
            if mount.get("subPath"):
                local = local / mount["subPath"]
                local.mkdir(parents=True, exist_ok=True)
            mounts.append((mount["mountPath"], local))
        if account_dir is not None:
            mounts.append((SERVICE_ACCOUNT_MOUNT, account_dir))
        termination_log = self.dir / "termination-log"
        termination_log.write_bytes(b"")
        message_path = container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH
        paths = _PathMap.build([(message_path, termination_log), *mounts])
        declared = self._declared_env(pod, container)
        env = {k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ}
        env["HOME"] = str(self.dir)
        env.update({name: paths.rewrite(value) for name, value in declared.items()})
        if account_dir is not None and "KUBECONFIG" not in declared:
            env["KUBECONFIG"] = str(self.dir / "kubeconfig")
        cwd = self.dir
        if container.get("workingDir"):
            mapped = paths.rewrite(container["workingDir"])
            if mapped != container["workingDir"] and Path(mapped).is_dir():
                cwd = Path(mapped)
        return _Launch(
            argv=_command(container, declared, paths),
            env=env,
            cwd=cwd,
            log_path=self.dir / "container.log",
            termination_log=termination_log,
            message_policy=container.get("terminationMessagePolicy") or "File",
            container=container,
        )

    def _declared_env(self, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
        """envFrom, then env (values, fieldRef, secretKeyRef, configMapKeyRef), expanded."""
        declared: dict[str, str] = {}
        namespace = self.namespace
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix") or ""
            ref = source.get("secretRef") or source.get("configMapRef") or {}
            kind = "Secret" if "secretRef" in source else "ConfigMap"
            data = self.kubelet._object_data(kind, namespace, ref.get("name", ""))
            if data is None:
                if ref.get("optional"):
                    continue
                raise _StartError(
                    "CreateContainerConfigError", f'{kind.lower()} "{ref.get("name")}" not found'
                )
            declared.update({prefix + k: v.decode(errors="replace") for k, v in data.items()})
        for var in container.get("env") or []:
            name = var["name"]
            source = var.get("valueFrom")
            if source is None:
                declared[name] = _expand(var.get("value") or "", declared)
                continue
            if "fieldRef" in source:
                declared[name] = _field_value(pod, source["fieldRef"]["fieldPath"])
                continue
            kind, ref = (
                ("Secret", source["secretKeyRef"])
                if "secretKeyRef" in source
                else ("ConfigMap", source.get("configMapKeyRef"))
            )
            if ref is None:
                raise _StartError(
                    "CreateContainerConfigError", f"env {name}: this valueFrom is not supported"
                )
            data = self.kubelet._object_data(kind, namespace, ref["name"])
            value = None if data is None else data.get(ref["key"])
            if value is None:
                if ref.get("optional"):
                    continue
                what = (
                    f'{kind.lower()} "{ref["name"]}" not found'
                    if data is None
                    else f"couldn't find key {ref['key']} in {kind} {namespace}/{ref['name']}"
                )
                raise _StartError("CreateContainerConfigError", what)
            declared[name] = value.decode(errors="replace")
        return declared

    def _mount_volumes(self, spec: dict[str, Any]) -> dict[str, Path]:
        volumes: dict[str, Path] = {}
        for volume in spec.get("volumes") or []:
            name = volume["name"]
            if volume.get("hostPath") is not None:
                volumes[name] = self._host_path(name, volume["hostPath"])
            elif volume.get("emptyDir") is not None:
                volumes[name] = self.dir / "volumes" / name
                volumes[name].mkdir(parents=True, exist_ok=True)
            elif volume.get("secret") is not None:
                source = volume["secret"]
                volumes[name] = self._projection(
                    name, "Secret", source.get("secretName", ""), source
                )
            elif volume.get("configMap") is not None:
                source = volume["configMap"]
                volumes[name] = self._projection(name, "ConfigMap", source.get("name", ""), source)
            else:
                raise _StartError(
                    "FailedMount",
                    f'MountVolume.SetUp failed for volume "{name}" : the test kubelet supports '
                    "hostPath, emptyDir, secret and configMap volumes only",
                )
        return volumes

    def _host_path(self, name: str, source: dict[str, Any]) -> Path:
        path = str(source["path"])
        kind = source.get("type") or ""
        local = self.kubelet.node_dir(self.node) / path.lstrip("/")

        def check_failed(what: str) -> _StartError:
            return _StartError(
                "FailedMount",
                f'MountVolume.SetUp failed for volume "{name}" : '
                f"hostPath type check failed: {path} is not a {what}",
            )

        if kind in ("", "DirectoryOrCreate"):  # "" : a runtime creates a missing directory
            local.mkdir(parents=True, exist_ok=True)
        elif kind == "Directory":
            if not local.is_dir():
                raise check_failed("directory")
        elif kind == "FileOrCreate":
            local.parent.mkdir(parents=True, exist_ok=True)
            local.touch(exist_ok=True)
        elif kind == "File":
            if not local.is_file():
                raise check_failed("file")
        else:
            raise _StartError(
                "FailedMount", f'volume "{name}": hostPath type {kind} is not supported here'
            )
        return local

    def _projection(self, name: str, kind: str, ref: str, source: dict[str, Any]) -> Path:
        """A Secret or ConfigMap written as files (items, modes) into a per-pod folder."""
        data = self.kubelet._object_data(kind, self.namespace, ref)
        if data is None:
            if not source.get("optional"):
                raise _StartError(
                    "FailedMount",
                    f'MountVolume.SetUp failed for volume "{name}" : '
                    f'{kind.lower()} "{ref}" not found',
                )
            data = {}
        default_mode = int(source.get("defaultMode", 0o644))
        if source.get("items"):
            files = []
            for item in source["items"]:
                if item["key"] not in data:
                    if source.get("optional"):
                        continue
                    raise _StartError(
                        "FailedMount",
                        f'MountVolume.SetUp failed for volume "{name}" : configmap references '
                        f"non-existent config key: {item['key']}"
                        if kind == "ConfigMap"
                        else f'MountVolume.SetUp failed for volume "{name}" : '
                        f"references non-existent secret key: {item['key']}",
                    )
                files.append((item["path"], data[item["key"]], int(item.get("mode", default_mode))))
        else:
            files = [(key, value, default_mode) for key, value in data.items()]
        target = self.dir / "volumes" / name
        shutil.rmtree(target, ignore_errors=True)  # a retry writes the current content
        target.mkdir(parents=True)
        for relative, content, mode in files:
            path = target / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            path.chmod(mode)
        return target

    def _service_account(self, pod: dict[str, Any]) -> Path | None:
        """The projected token the ServiceAccount admission plugin would have added.

        A TokenRequest bound to this pod, for ``spec.serviceAccountName`` (default
        ``default``); a missing account is a FailedMount, never an admin fallback.
        """
        if pod["spec"].get("automountServiceAccountToken") is False:
            return None
        token = self._request_token(pod)
        account_dir = self.dir / "serviceaccount"
        cluster = self.kubelet._cluster
        _write_atomic(account_dir / "token", token.encode(), 0o600)
        _write_atomic(account_dir / "namespace", self.namespace.encode())
        entry: dict[str, Any] = {"server": cluster.server}
        if cluster.ca_pem is not None:
            _write_atomic(account_dir / "ca.crt", cluster.ca_pem)
            entry["certificate-authority"] = str(account_dir / "ca.crt")
        if cluster.insecure:
            entry["insecure-skip-tls-verify"] = True
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "cluster", "cluster": entry}],
            "users": [{"name": "pod", "user": {"tokenFile": str(account_dir / "token")}}],
            "contexts": [
                {
                    "name": "pod",
                    "context": {"cluster": "cluster", "user": "pod", "namespace": self.namespace},
                }
            ],
            "current-context": "pod",
        }
        # JSON (which is YAML too): the uploader reads it without importing a YAML parser
        _write_atomic(self.dir / "kubeconfig", json.dumps(config, indent=1).encode())
        return account_dir

    def _request_token(self, pod: dict[str, Any]) -> str:
        spec = pod["spec"]
        account = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
        lifetime = min(max(3600, int(spec.get("activeDeadlineSeconds") or 0) + 600), 48 * 3600)
        body = {
            "spec": {
                "expirationSeconds": lifetime,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": self.name,
                    "uid": self.uid,
                },
            }
        }
        try:
            result = self.kubelet._core.create_namespaced_service_account_token(
                account, self.namespace, body, _request_timeout=API_TIMEOUT
            )
        except k8s.ApiException as exc:
            raise _StartError(
                "FailedMount",
                'MountVolume.SetUp failed for volume "kube-api-access" : '
                f"failed to fetch token: {_api_message(exc)}",
            ) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _StartError("FailedMount", f"failed to fetch token: {exc}") from exc
        self._token_refresh_at = time.monotonic() + 0.8 * lifetime
        return str(result.status.token)

    def _refresh_token_if_due(self) -> None:
        """Like the kubelet, renew the token file at 80% of its lifetime."""
        due = self._token_refresh_at
        if due is None or time.monotonic() < due:
            return
        try:
            token = self._request_token(self.pod)
        except _StartError as err:
            log.warning("pod %s: token refresh: %s", self.key, err.message)
            self._token_refresh_at = time.monotonic() + 60
            return
        _write_atomic(self.dir / "serviceaccount" / "token", token.encode(), 0o600)


# --- the kubelet ------------------------------------------------------------------------------


class FakeKubelet:
    """Registers ``nodes`` and runs the pods bound to them as local process groups.

    ``start()``/``stop()`` or a context manager; one instance runs once. Thread-safe: a
    watch thread per node, a heartbeat thread and a thread per pod, all daemons.
    """

    def __init__(self, kubeconfig: Path, root: Path, nodes: Sequence[str]) -> None:
        if not nodes:
            raise ValueError("FakeKubelet needs at least one node")
        self.kubeconfig = Path(kubeconfig)
        self.root = Path(root).resolve()
        self.nodes = list(dict.fromkeys(nodes))
        self._cluster = _read_cluster(self.kubeconfig)
        self._api: Any = None
        self._core: Any = None
        self._lock = threading.Lock()
        self._workers: dict[str, _PodWorker] = {}
        self._done: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._watches: dict[str, Any] = {}
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._kill_on_stop = True
        self._started = False
        self._since: dict[str, str] = {}
        self._version = "v0.0.0-test"

    # -- public API ---------------------------------------------------------------------

    def start(self) -> FakeKubelet:
        """Kill leftovers of an earlier harness on these nodes, register the nodes, watch."""
        if self._started:
            raise RuntimeError("a FakeKubelet starts once; create a new one")
        self._started = True
        for folder in ("pods", "nodes", "pids"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            self.node_dir(node).mkdir(parents=True, exist_ok=True)
        leftovers = kill_leftovers(self.root, self.nodes)
        if leftovers:
            log.warning("killed process groups left by an earlier harness: %s", leftovers)
        self._api = _api_client(self.kubeconfig)
        self._core = k8s.CoreV1Api(self._api)
        try:
            with contextlib.suppress(k8s.ApiException):
                self._version = str(k8s.VersionApi(self._api).get_code().git_version)
            for node in self.nodes:
                self._register(node)
        except BaseException:
            self._stopping.set()
            self._api.close()
            raise
        for node in self.nodes:
            self._spawn(self._watch_loop, f"watch-{node}", node)
        self._spawn(self._heartbeat_loop, "heartbeat")
        return self

    @property
    def running(self) -> bool:
        """Started and not stopped (an instance is not restarted: make a new one)."""
        return self._started and not self._stopping.is_set()

    def stop(self, kill_processes: bool = True) -> None:
        """Stop watching and heart-beating. ``kill_processes`` (default) kills the running
        pods' groups without touching their status, like a node that went away; otherwise
        they keep running (their pid files stay, for ``kill_leftovers``)."""
        if not self._started or self._stopping.is_set():
            return
        self._kill_on_stop = kill_processes
        self._stopping.set()
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.wake()
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            with self._lock:
                watches = list(self._watches.values())
            for watcher in watches:
                watcher.stop()  # shuts the socket of a watch that is blocked reading
            alive = [t for t in self._threads if t.is_alive()]
            if not alive:
                break
            alive[0].join(timeout=0.2)
        finish_by = time.monotonic() + STOP_GRACE_SECONDS + 5.0
        for worker in workers:
            worker.thread.join(timeout=max(0.1, finish_by - time.monotonic()))
            process = worker.process
            if kill_processes and worker.running and process is not None:
                _signal_group(process.pid, signal.SIGKILL)
        stuck = [t.name for t in self._threads if t.is_alive()]
        if stuck:
            log.warning("threads still running after stop: %s", stuck)
        self._api.close()

    def __enter__(self) -> FakeKubelet:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def node_dir(self, node: str) -> Path:
        """Where the hostPath volumes of ``node`` live."""
        return self.root / "nodes" / node

    def pod_dir(self, namespace: str, name: str) -> Path | None:
        """The folder of the newest pod of that name this root has seen, if any."""
        with self._lock:
            for worker in self._workers.values():
                if (worker.namespace, worker.name) == (namespace, name):
                    return worker.dir
        found = list((self.root / "pods").glob(f"{namespace}_{name}_*"))
        return max(found, key=lambda p: p.stat().st_mtime) if found else None

    def pod_log(self, namespace: str, name: str) -> str:
        """stdout + stderr of the pod's process; empty if it never started."""
        folder = self.pod_dir(namespace, name)
        if folder is None:
            return ""
        try:
            return (folder / "container.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def running_pods(self) -> list[str]:
        """``namespace/name`` of the pods whose process is running now."""
        with self._lock:
            return sorted(w.key for w in self._workers.values() if w.running)

    # -- nodes ------------------------------------------------------------------------

    def _spawn(self, target: Any, name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _register(self, node: str) -> None:
        labels = {
            "kubernetes.io/hostname": node,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": {"x86_64": "amd64", "aarch64": "arm64"}.get(
                platform.machine(), platform.machine()
            ),
        }
        body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": labels}}
        try:
            self._core.create_node(body, _request_timeout=API_TIMEOUT)
        except k8s.ApiException as exc:
            if exc.status != 409:
                raise
            self._core.patch_node(
                node,
                {"metadata": {"labels": labels}},
                _content_type=MERGE_PATCH,
                _request_timeout=API_TIMEOUT,
            )
        self._since[node] = _stamp(_now())
        self._beat(node)
        # What the node lifecycle controller would do for a Ready node (none runs here).
        taints = self._core.read_node(node, _request_timeout=API_TIMEOUT).spec.taints or []
        kept = [t for t in taints if t.key != NOT_READY_TAINT]
        if len(kept) != len(taints):
            body = {"spec": {"taints": self._api.sanitize_for_serialization(kept) or None}}
            self._core.patch_node(
                node, body, _content_type=MERGE_PATCH, _request_timeout=API_TIMEOUT
            )
        log.info("node %s registered", node)

    def _beat(self, node: str) -> None:
        beat = _stamp(_now())
        since = self._since[node]

        def condition(type_: str, value: bool, reason: str, message: str) -> dict[str, Any]:
            return {
                "type": type_,
                "status": "True" if value else "False",
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": beat,
                "lastTransitionTime": since,
            }

        status = {
            "capacity": NODE_CAPACITY,
            "allocatable": NODE_CAPACITY,
            "conditions": [
                condition("MemoryPressure", False, "KubeletHasSufficientMemory", "test kubelet"),
                condition("DiskPressure", False, "KubeletHasNoDiskPressure", "test kubelet"),
                condition("PIDPressure", False, "KubeletHasSufficientPID", "test kubelet"),
                condition("Ready", True, "KubeletReady", "test kubelet is posting ready status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": HOST_IP},
                {"type": "Hostname", "address": node},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": platform.release(),
                "osImage": "voicevault test kubelet",
                "containerRuntimeVersion": "harness://local-process",
                "kubeletVersion": self._version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": platform.machine(),
            },
        }
        self._core.patch_node_status(
            node, {"status": status}, _content_type=MERGE_PATCH, _request_timeout=API_TIMEOUT
        )

    def _heartbeat_loop(self) -> None:
        while not self._stopping.wait(HEARTBEAT_SECONDS):
            for node in self.nodes:
                try:
                    self._beat(node)
                except k8s.ApiException as exc:
                    log.warning("node %s: heartbeat: %s", node, _api_message(exc))
                except (urllib3.exceptions.HTTPError, OSError) as exc:
                    log.warning("node %s: heartbeat: %s", node, exc)

    # -- pods -------------------------------------------------------------------------

    def _watch_loop(self, node: str) -> None:
        """List, then watch from that version; relist on 410, back off on failures."""
        selector = f"spec.nodeName={node}"
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                version = self._relist(node, selector)
                backoff = 0.5
                while not self._stopping.is_set():
                    watcher: Any = _WATCH()
                    with self._lock:
                        self._watches[node] = watcher
                    if self._stopping.is_set():
                        break
                    for event in watcher.stream(
                        self._core.list_pod_for_all_namespaces,
                        field_selector=selector,
                        resource_version=version,
                        allow_watch_bookmarks=True,
                        timeout_seconds=WATCH_SECONDS,
                        _request_timeout=(API_TIMEOUT, WATCH_SECONDS + 30),
                    ):
                        pod = event["raw_object"]
                        version = pod.get("metadata", {}).get("resourceVersion", version)
                        if event["type"] != "BOOKMARK":
                            self._dispatch(node, event["type"], pod)
            except k8s.ApiException as exc:
                if exc.status == 410:
                    log.info("node %s: watch expired; relisting", node)
                    continue
                log.warning("node %s: watch: %s", node, _api_message(exc))
            except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                if self._stopping.is_set():
                    break
                log.warning("node %s: watch: %s", node, exc)
            except Exception:
                log.exception("node %s: watch failed", node)
            if self._stopping.wait(backoff):
                break
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    def _relist(self, node: str, selector: str) -> str:
        response = self._core.list_pod_for_all_namespaces(
            field_selector=selector, _preload_content=False, _request_timeout=API_TIMEOUT
        )
        data = json.loads(response.data)
        seen = set()
        for pod in data.get("items") or []:
            seen.add(pod["metadata"]["uid"])
            self._dispatch(node, "LISTED", pod)
        with self._lock:
            vanished = [w for w in self._workers.values() if w.node == node and w.uid not in seen]
        for worker in vanished:  # deleted while the watch was down
            worker.gone()
        return str(data["metadata"]["resourceVersion"])

    def _dispatch(self, node: str, kind: str, pod: dict[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        uid = meta.get("uid")
        if not uid or (pod.get("spec") or {}).get("nodeName") != node:
            return
        delete_now = False
        with self._lock:
            worker = self._workers.get(uid)
            if kind == "DELETED":
                if worker is not None:
                    worker.gone()
                return
            if worker is not None:
                worker.update(pod)
                return
            phase = (pod.get("status") or {}).get("phase")
            if uid in self._done or phase in TERMINAL_PHASES:
                # Finished: only a pending graceful deletion is left to complete.
                delete_now = bool(meta.get("deletionTimestamp"))
            elif not self._stopping.is_set():
                worker = _PodWorker(self, node, pod)
                self._workers[uid] = worker
                worker.thread.start()
        if delete_now:
            self._force_delete(meta["namespace"], meta["name"], uid)

    def _forget(self, worker: _PodWorker) -> None:
        with self._lock:
            self._workers.pop(worker.uid, None)
            self._done[worker.uid] = None
            while len(self._done) > DONE_MEMORY:
                self._done.popitem(last=False)

    def _force_delete(self, namespace: str, name: str, uid: str) -> None:
        """Finish a graceful deletion (the kubelet's last step): grace 0, this uid only."""
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
        try:
            self._core.delete_namespaced_pod(
                name, namespace, grace_period_seconds=0, body=body, _request_timeout=API_TIMEOUT
            )
            log.info("pod %s/%s: deleted", namespace, name)
        except k8s.ApiException as exc:
            if exc.status not in (404, 409):
                log.warning("pod %s/%s: delete: %s", namespace, name, _api_message(exc))
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            log.warning("pod %s/%s: delete: %s", namespace, name, exc)

    def _object_data(self, kind: str, namespace: str, name: str) -> dict[str, bytes] | None:
        """A Secret's or ConfigMap's data as bytes; None if it does not exist (yet)."""
        try:
            if kind == "Secret":
                secret = self._core.read_namespaced_secret(
                    name, namespace, _request_timeout=API_TIMEOUT
                )
                return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
            config_map = self._core.read_namespaced_config_map(
                name, namespace, _request_timeout=API_TIMEOUT
            )
        except k8s.ApiException as exc:
            if exc.status == 404:
                return None
            raise _StartError(
                "FailedMount", f"cannot read {kind} {namespace}/{name}: {_api_message(exc)}"
            ) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _StartError(
                "FailedMount", f"cannot read {kind} {namespace}/{name}: {exc}"
            ) from exc
        data = {k: v.encode() for k, v in (config_map.data or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (config_map.binary_data or {}).items()})
        return data

    def _event(self, pod: dict[str, Any], node: str, type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about the pod, as the kubelet records them; best effort."""
        meta = pod["metadata"]
        now = _stamp(_now())
        body = {
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}"},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": type_,
            "reason": reason,
            "message": message,
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": "kubelet", "host": node},
            "reportingComponent": "kubelet",
            "reportingInstance": node,
        }
        try:
            self._core.create_namespaced_event(
                meta["namespace"], body, _request_timeout=API_TIMEOUT
            )
        except (k8s.ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            log.debug("event %s for %s: %s", reason, meta["name"], exc)


# --- separate process ----------------------------------------------------------------------


def run_in_subprocess(
    kubeconfig: Path,
    root: Path,
    nodes: Sequence[str],
    *,
    log_path: Path | None = None,
    ready_timeout: float = 60.0,
) -> subprocess.Popen[bytes]:
    """Start ``python -m tests.bed.kubelet`` and wait until its nodes are registered.

    For tests that SIGKILL the harness (a node whose kubelet is gone); its pods' processes
    survive that, so such tests call ``kill_leftovers(root)`` in their teardown.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    ready = root / READY_FILE
    ready.unlink(missing_ok=True)
    log_path = log_path or root / "kubelet.log"
    argv = [sys.executable, "-m", "tests.bed.kubelet", "--kubeconfig", str(kubeconfig)]
    argv += ["--root", str(root)]
    for node in nodes:
        argv += ["--node", node]
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + ready_timeout
    while True:
        with contextlib.suppress(OSError):
            if ready.read_text().strip() == str(process.pid):
                return process
        code = process.poll()
        if code is not None or time.monotonic() > deadline:
            if code is None:
                process.kill()
                process.wait(10)
            tail = log_path.read_bytes()[-4000:].decode(errors="replace")
            raise RuntimeError(f"test kubelet not ready (exit code {code}):\n{tail}")
        time.sleep(0.05)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bed.kubelet",
        description="Test/dev stand-in kubelet: runs pods bound to NODEs as local processes.",
    )
    parser.add_argument("--kubeconfig", type=Path, required=True, help="admin kubeconfig")
    parser.add_argument("--root", type=Path, required=True, help="folder for nodes and pods")
    parser.add_argument("--node", action="append", required=True, help="node name (repeat)")
    parser.add_argument(
        "--leave-processes", action="store_true", help="on SIGTERM, leave pod processes running"
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s [%(threadName)s] %(name)s: %(message)s",
    )
    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    kubelet = FakeKubelet(args.kubeconfig, args.root, args.node).start()
    try:
        _write_atomic(args.root / READY_FILE, f"{os.getpid()}\n".encode())
        while not stop.wait(1.0):
            pass
    finally:
        kubelet.stop(kill_processes=not args.leave_processes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
