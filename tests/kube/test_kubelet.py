"""The test kubelet runs pods bound to its nodes as processes and reports like a kubelet.

Each test gets its own node name and harness root; every wait polls the real API with
a deadline, so a broken harness fails a test instead of hanging it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from tests.bed.controlplane import ControlPlane
from tests.bed.fixtures import unique_name
from tests.bed.kubelet import FakeKubelet, kill_leftovers, run_in_subprocess

pytestmark = pytest.mark.kube

ACCOUNT = "uploader"
WAIT_S = 30.0
TERMINATION_LOG = "/dev/termination-log"


# --- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture
def core(kube_api: Any) -> Any:
    return k8s.CoreV1Api(kube_api)


@pytest.fixture
def node(core: Any) -> Iterator[str]:
    name = unique_name("node")
    yield name
    try:
        core.delete_node(name)
    except k8s.ApiException as exc:
        if exc.status != 404:
            raise


@pytest.fixture
def kubelet(control_plane: ControlPlane, tmp_path: Path, node: str) -> Iterator[FakeKubelet]:
    with FakeKubelet(control_plane.admin_kubeconfig, tmp_path / "kubelet", [node]) as running:
        yield running


@pytest.fixture
def account(kube_api: Any, core: Any, namespace: str) -> str:
    """A ServiceAccount that may only ``get`` pods in the test namespace."""
    core.create_namespaced_service_account(namespace, {"metadata": {"name": ACCOUNT}})
    rbac: Any = k8s.RbacAuthorizationV1Api(kube_api)
    rule = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "get-pods"}, "rules": [rule]})
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "get-pods"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "get-pods",
            },
            "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": namespace}],
        },
    )
    return ACCOUNT


def _pod(
    name: str,
    node: str,
    script: str,
    *,
    args: list[str] | None = None,
    volumes: list[dict[str, Any]] | None = None,
    mounts: list[dict[str, Any]] | None = None,
    env: list[dict[str, Any]] | None = None,
    account: str | None = None,
    deadline: int | None = None,
    grace: int = 5,
) -> dict[str, Any]:
    """A pod running ``python -c script args...``; no token unless ``account`` is given."""
    container = {
        "name": "main",
        "image": "test",
        "command": ["python", "-c", script, *(args or [])],
        "env": env or [],
        "volumeMounts": mounts or [],
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    spec: dict[str, Any] = {
        "nodeName": node,
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": grace,
        "containers": [container],
        "volumes": volumes or [],
    }
    if account is None:
        spec["automountServiceAccountToken"] = False
    else:
        spec["serviceAccountName"] = account
    if deadline is not None:
        spec["activeDeadlineSeconds"] = deadline
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def _host_dir(name: str, path: str, kind: str = "DirectoryOrCreate") -> dict[str, Any]:
    return {"name": name, "hostPath": {"path": path, "type": kind}}


def _wait_pod(
    core: Any,
    namespace: str,
    name: str,
    ready: Callable[[Any], bool],
    what: str,
    timeout: float = WAIT_S,
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        pod = core.read_namespaced_pod(name, namespace)
        if ready(pod):
            return pod
        if time.monotonic() > deadline:
            raise AssertionError(f"pod {name}: not {what} after {timeout:.0f}s: {pod.status}")
        time.sleep(0.1)


def _wait(check: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout:.0f}s")
        time.sleep(0.1)


def _terminal(pod: Any) -> bool:
    return pod.status.phase in ("Succeeded", "Failed")


def _running(pod: Any) -> bool:
    statuses = pod.status.container_statuses or []
    return bool(statuses and statuses[0].state.running)


def _terminated(pod: Any) -> Any:
    return pod.status.container_statuses[0].state.terminated


def _condition(pod: Any, type_: str) -> Any:
    return next((c for c in pod.status.conditions or [] if c.type == type_), None)


def _pid(pod: Any) -> int:
    container_id = pod.status.container_statuses[0].container_id
    assert container_id.startswith("harness://")
    return int(container_id.removeprefix("harness://"))


def _alive(pid: int) -> bool:
    """Running (not a zombie): ``kill(pid, 0)`` also succeeds for an unreaped corpse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _gone(core: Any, namespace: str, name: str) -> bool:
    try:
        core.read_namespaced_pod(name, namespace)
    except k8s.ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


SLEEP_FOREVER = "import time\nwhile True: time.sleep(0.1)"


# --- tests ----------------------------------------------------------------------------------


def test_pod_succeeds_with_host_path_and_termination_message(
    core: Any, namespace: str, node: str, kubelet: FakeKubelet
) -> None:
    script = (
        "import pathlib, sys\n"
        "pathlib.Path(sys.argv[1], 'result.txt').write_text('hello from the pod')\n"
        "pathlib.Path(sys.argv[2]).write_text('done: 42')\n"
        "print('finished')\n"
    )
    pod = _pod(
        "ok",
        node,
        script,
        args=["/out", TERMINATION_LOG],
        volumes=[_host_dir("out", "/data/out")],
        mounts=[{"name": "out", "mountPath": "/out"}],
    )
    core.create_namespaced_pod(namespace, pod)

    done = _wait_pod(core, namespace, "ok", _terminal, "finished")
    assert done.status.phase == "Succeeded"
    terminated = _terminated(done)
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")
    assert terminated.message == "done: 42"
    assert terminated.started_at <= terminated.finished_at
    assert done.status.host_ip == done.status.pod_ip == "127.0.0.1"
    assert done.status.start_time is not None
    assert _condition(done, "Ready").status == "False"
    assert _condition(done, "Ready").reason == "PodCompleted"
    result = kubelet.node_dir(node) / "data" / "out" / "result.txt"
    assert result.read_text() == "hello from the pod"
    assert "finished" in kubelet.pod_log(namespace, "ok")


def test_failed_pod_message_falls_back_to_the_log_tail(
    core: Any, namespace: str, node: str, kubelet: FakeKubelet
) -> None:
    script = "import sys\nfor i in range(100):\n    print(f'line {i}')\nsys.exit(3)\n"
    core.create_namespaced_pod(namespace, _pod("fails", node, script))

    done = _wait_pod(core, namespace, "fails", _terminal, "finished")
    assert done.status.phase == "Failed"
    terminated = _terminated(done)
    assert (terminated.exit_code, terminated.reason) == (3, "Error")
    # The kubelet's fallback: the last 80 lines of the log.
    assert terminated.message.splitlines() == [f"line {i}" for i in range(20, 100)]


def test_secret_volume_field_ref_and_secret_key_env(
    core: Any, namespace: str, node: str, kubelet: FakeKubelet
) -> None:
    script = (
        "import json, os, pathlib, sys\n"
        "token = pathlib.Path(os.environ['CREDS'], 'token')\n"
        "pathlib.Path(sys.argv[1]).write_text(json.dumps({\n"
        "    'token': token.read_text(), 'mode': oct(token.stat().st_mode & 0o777),\n"
        "    'pod': os.environ['POD_NAME'], 'node': os.environ['NODE'],\n"
        "    'key': os.environ['API_KEY'], 'env': sorted(os.environ)}))\n"
    )
    env: list[dict[str, Any]] = [
        {"name": "CREDS", "value": "/var/run/creds"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "api-key"}}},
    ]
    volume = {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o440}}
    mount = {"name": "creds", "mountPath": "/var/run/creds", "readOnly": True}
    pod = _pod("reader", node, script, args=[TERMINATION_LOG], env=env)
    pod["spec"]["volumes"] = [volume]
    pod["spec"]["containers"][0]["volumeMounts"] = [mount]
    core.create_namespaced_pod(namespace, pod)

    # Like the operator, create the Secret only after the Pod: the kubelet waits for it.
    seen = _wait_pod(core, namespace, "reader", lambda p: p.status.start_time, "accepted")
    assert seen.status.phase == "Pending"
    secret = {"metadata": {"name": "creds"}, "stringData": {"token": "s3cr3t", "api-key": "k-1"}}
    core.create_namespaced_secret(namespace, secret)

    done = _wait_pod(core, namespace, "reader", _terminal, "finished")
    assert done.status.phase == "Succeeded", kubelet.pod_log(namespace, "reader")
    report = json.loads(_terminated(done).message)
    assert report["token"] == "s3cr3t"
    assert report["mode"] == "0o440"
    assert (report["pod"], report["node"], report["key"]) == ("reader", node, "k-1")
    assert "KUBERNETES_SERVICE_HOST" not in report["env"]
    assert "KUBECONFIG" not in report["env"]  # automountServiceAccountToken: false
    expected = {"CREDS", "POD_NAME", "NODE", "API_KEY", "HOME", "PATH", "PYTHONPATH"}
    assert set(report["env"]) <= expected | {"PYTHONHOME", "VIRTUAL_ENV", "LC_CTYPE"}


def test_token_is_the_service_accounts_own(
    core: Any, namespace: str, node: str, account: str, kubelet: FakeKubelet
) -> None:
    script = (
        "import json, os, sys\n"
        "from kubernetes import client, config\n"
        "try:\n"
        "    config.load_incluster_config(); how = 'in-cluster'\n"
        "except config.ConfigException:\n"
        "    config.load_kube_config(); how = 'kubeconfig'\n"
        "api = client.CoreV1Api()\n"
        "me = api.read_namespaced_pod(os.environ['POD_NAME'], os.environ['POD_NAMESPACE'])\n"
        "try:\n"
        "    api.list_namespaced_secret(os.environ['POD_NAMESPACE']); secrets = 'allowed'\n"
        "except client.ApiException as exc:\n"
        "    secrets = exc.status\n"
        "result = {'how': how, 'me': me.metadata.name, 'secrets': secrets}\n"
        "open(sys.argv[1], 'w').write(json.dumps(result))\n"
    )
    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    pod = _pod("whoami", node, script, args=[TERMINATION_LOG], env=env, account=account)
    core.create_namespaced_pod(namespace, pod)

    done = _wait_pod(core, namespace, "whoami", _terminal, "finished")
    assert done.status.phase == "Succeeded", kubelet.pod_log(namespace, "whoami")
    report = json.loads(_terminated(done).message)
    assert report == {"how": "kubeconfig", "me": "whoami", "secrets": 403}


def test_missing_service_account_keeps_the_pod_pending(
    core: Any, namespace: str, node: str, kubelet: FakeKubelet
) -> None:
    core.create_namespaced_pod(namespace, _pod("orphan", node, "pass", account="nobody"))

    def failed_mount(pod: Any) -> bool:
        condition = _condition(pod, "PodReadyToStartContainers")
        return bool(condition and condition.reason == "FailedMount")

    pending = _wait_pod(core, namespace, "orphan", failed_mount, "reported as FailedMount")
    assert pending.status.phase == "Pending"
    message = _condition(pending, "PodReadyToStartContainers").message
    assert 'serviceaccounts "nobody" not found' in message
    assert pending.status.container_statuses[0].state.waiting.reason == "ContainerCreating"
    events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=orphan")
    assert any(e.reason == "FailedMount" and e.type == "Warning" for e in events.items)
    assert kubelet.running_pods() == []


def test_missing_host_directory_waits_until_it_exists(
    core: Any, namespace: str, node: str, kubelet: FakeKubelet
) -> None:
    volume = _host_dir("media", "/srv/media", kind="Directory")
    mount = {"name": "media", "mountPath": "/media"}
    script = "import os, sys\nprint(sorted(os.listdir(sys.argv[1])))"
    pod = _pod("media", node, script, args=["/media"], volumes=[volume], mounts=[mount])
    core.create_namespaced_pod(namespace, pod)

    def failed_mount(pod: Any) -> bool:
        condition = _condition(pod, "PodReadyToStartContainers")
        return bool(condition and condition.reason == "FailedMount")

    pending = _wait_pod(core, namespace, "media", failed_mount, "reported as FailedMount")
    assert pending.status.phase == "Pending"
    message = _condition(pending, "PodReadyToStartContainers").message
    assert "hostPath type check failed: /srv/media is not a directory" in message

    media = kubelet.node_dir(node) / "srv" / "media"
    media.mkdir(parents=True)
    (media / "call-1.wav").write_bytes(b"RIFF")
    done = _wait_pod(core, namespace, "media", _terminal, "finished")
    assert done.status.phase == "Succeeded"
    assert "['call-1.wav']" in kubelet.pod_log(namespace, "media")


def test_active_deadline_fails_the_pod(
    core: Any, namespace: str, node: str, kubelet: FakeKubelet
) -> None:
    pod = _pod("slow", node, SLEEP_FOREVER, deadline=2, grace=1)
    core.create_namespaced_pod(namespace, pod)

    done = _wait_pod(core, namespace, "slow", _terminal, "finished", timeout=20)
    assert done.status.phase == "Failed"
    assert done.status.reason == "DeadlineExceeded"
    assert "deadline" in done.status.message
    terminated = _terminated(done)
    assert terminated.reason == "Error"
    assert terminated.exit_code == 128 + signal.SIGTERM
    assert kubelet.running_pods() == []


def test_graceful_deletion_sends_sigterm_then_removes_the_pod(
    core: Any, namespace: str, node: str, kubelet: FakeKubelet
) -> None:
    script = (
        "import pathlib, signal, sys, time\n"
        "out = pathlib.Path(sys.argv[1])\n"
        "def on_term(signum, frame):\n"
        "    (out / 'terminated').write_text('SIGTERM')\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, on_term)\n"
        "(out / 'ready').write_text('ready')\n"
        "while True:\n"
        "    time.sleep(0.1)\n"
    )
    volume = _host_dir("out", "/data/graceful")
    mount = {"name": "out", "mountPath": "/out"}
    pod = _pod("graceful", node, script, args=["/out"], volumes=[volume], mounts=[mount], grace=10)
    core.create_namespaced_pod(namespace, pod)
    out = kubelet.node_dir(node) / "data" / "graceful"
    _wait((out / "ready").exists, "ready (SIGTERM handler installed)")
    assert kubelet.running_pods() == [f"{namespace}/graceful"]

    core.delete_namespaced_pod("graceful", namespace, grace_period_seconds=10)

    _wait(lambda: _gone(core, namespace, "graceful"), "deleted", timeout=20)
    assert (out / "terminated").read_text() == "SIGTERM"
    _wait(lambda: kubelet.running_pods() == [], "reported as stopped", timeout=5)


def test_force_deletion_kills_the_process(
    core: Any, namespace: str, node: str, kubelet: FakeKubelet
) -> None:
    core.create_namespaced_pod(namespace, _pod("forced", node, SLEEP_FOREVER))
    pid = _pid(_wait_pod(core, namespace, "forced", _running, "running"))
    assert _alive(pid)

    core.delete_namespaced_pod("forced", namespace, grace_period_seconds=0)

    assert _gone(core, namespace, "forced")
    _wait(lambda: not _alive(pid), "killed", timeout=10)
    _wait(lambda: kubelet.running_pods() == [], "reported as stopped", timeout=5)


def test_pod_on_another_node_is_left_alone(
    core: Any, namespace: str, node: str, kubelet: FakeKubelet
) -> None:
    core.create_namespaced_pod(namespace, _pod("elsewhere", unique_name("other"), "pass"))
    core.create_namespaced_pod(namespace, _pod("here", node, "pass"))
    _wait_pod(core, namespace, "here", _terminal, "finished")  # the kubelet is watching

    other = core.read_namespaced_pod("elsewhere", namespace)
    assert other.status.phase == "Pending"
    assert other.status.start_time is None
    assert other.status.container_statuses is None
    assert kubelet.pod_dir(namespace, "elsewhere") is None


def test_killed_harness_leaves_processes_for_kill_leftovers_and_a_restart(
    control_plane: ControlPlane, core: Any, namespace: str, node: str, tmp_path: Path
) -> None:
    root = tmp_path / "standalone"
    harness = run_in_subprocess(control_plane.admin_kubeconfig, root, [node])
    try:
        core.create_namespaced_pod(namespace, _pod("survivor", node, SLEEP_FOREVER))
        pid = _pid(_wait_pod(core, namespace, "survivor", _running, "running"))

        os.kill(harness.pid, signal.SIGKILL)  # the node's kubelet is gone
        harness.wait(10)
        assert _alive(pid)
        assert core.read_namespaced_pod("survivor", namespace).status.phase == "Running"

        assert kill_leftovers(root) == [pid]
        _wait(lambda: not _alive(pid), "killed", timeout=10)

        # A restarted kubelet finds a Running pod whose process it never started.
        with FakeKubelet(control_plane.admin_kubeconfig, root, [node]):
            lost = _wait_pod(core, namespace, "survivor", _terminal, "reported lost")
        assert lost.status.phase == "Failed"
        assert _terminated(lost).reason == "ContainerStatusUnknown"
    finally:
        if harness.poll() is None:
            harness.kill()
            harness.wait(10)
        kill_leftovers(root)


def test_kubelet_reconnects_after_an_apiserver_restart(
    control_plane: ControlPlane, core: Any, namespace: str, node: str, kubelet: FakeKubelet
) -> None:
    control_plane.restart_apiserver()  # breaks the watch; same etcd, port and certificates

    core.create_namespaced_pod(namespace, _pod("after-restart", node, "print('back')"))

    done = _wait_pod(core, namespace, "after-restart", _terminal, "finished")
    assert done.status.phase == "Succeeded"
    assert "back" in kubelet.pod_log(namespace, "after-restart")
