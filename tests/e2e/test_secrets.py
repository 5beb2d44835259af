"""No secret reaches a log, Event, status, metric, pod spec or termination message.

Runs a scenario that touches every path (encrypted upload interrupted and resumed, a
fatal failure, a session token, signed callbacks), then scans everything the stack
produced for every secret value it handed out: secret access keys, session tokens,
callback signing keys and the raw content keys that sat in the node-local resume state.
Uploader pods are watched while the scenario runs: the operator deletes finished pods,
so their specs and final statuses are only seen on the way.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import watch

from tests.bed.controlplane import api_client
from tests.bed.faultproxy import FaultProxy, Respond, Rule
from tests.bed.stack import SYSTEM_NAMESPACE, Stack
from tests.support.callbacks import CallbackReceiver
from tests.support.kube import as_dict, wait_for
from voicevault import API_GROUP, API_VERSION

pytestmark = [pytest.mark.kube, pytest.mark.s3, pytest.mark.slow]
MIB = 1 << 20
UPLOADER_PODS = "app.kubernetes.io/component=uploader"


class PodWatch:
    """Every version of every uploader pod, from a list then a watch in a thread."""

    def __init__(self, stack: Stack) -> None:
        self._api = api_client(stack.cp.admin_kubeconfig)
        self._core = k8s.CoreV1Api(self._api)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._resource_version = ""
        self.versions: list[dict[str, Any]] = []
        self.errors: list[str] = []

    def __enter__(self) -> PodWatch:
        listed = as_dict(
            self._api.sanitize_for_serialization(
                self._core.list_namespaced_pod(SYSTEM_NAMESPACE, label_selector=UPLOADER_PODS)
            )
        )
        self.versions += listed["items"]
        self._resource_version = listed["metadata"]["resourceVersion"]
        self._thread.start()
        return self

    def _run(self) -> None:
        # short watches, each resumed where the last ended, so that a stop is seen soon
        try:
            while not self._stopping.is_set():
                for event in watch.Watch().stream(
                    self._core.list_namespaced_pod,
                    SYSTEM_NAMESPACE,
                    label_selector=UPLOADER_PODS,
                    resource_version=self._resource_version,
                    timeout_seconds=1,
                ):
                    self.versions.append(event["raw_object"])
                    self._resource_version = event["raw_object"]["metadata"]["resourceVersion"]
        except Exception as exc:  # reported by the test: a gap would make the scan blind
            self.errors.append(repr(exc))

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping.set()
        self._thread.join(30)
        self._api.close()

    def pods(self) -> set[str]:
        return {v["metadata"]["name"] for v in self.versions}

    def termination_messages(self) -> list[str]:
        return [
            state["terminated"]["message"]
            for v in self.versions
            for state in (
                c.get("state") or {} for c in (v.get("status") or {}).get("containerStatuses") or []
            )
            if (state.get("terminated") or {}).get("message")
        ]


def _state_files(stack: Stack) -> list[Path]:
    return list(
        (stack.kubelet.root / "nodes").glob(
            "*/var/lib/voicevault/recordings/.voicevault/state/*.json"
        )
    )


def _everything(stack: Stack, pods: PodWatch) -> dict[str, str]:
    """Every text the stack produced, by where it came from."""
    texts: dict[str, str] = {
        "operator.log": stack.operator.log(),
        "metrics": stack.operator.metrics(),
    }
    for path in (stack.kubelet.root / "pods").glob("*/*"):
        if path.is_file() and path.name in ("container.log", "termination-log"):
            texts[str(path.relative_to(stack.kubelet.root))] = path.read_text(errors="replace")
    events = stack.core.list_event_for_all_namespaces().items
    texts["events"] = "\n".join(f"{e.reason} {e.message}" for e in events)
    for plural in ("recordings", "voicestoragesettings", "awscredentials"):
        items = as_dict(stack.custom.list_cluster_custom_object(API_GROUP, API_VERSION, plural))[
            "items"
        ]
        texts[plural] = json.dumps([i.get("status") for i in items])
    left = stack.core.list_namespaced_pod(SYSTEM_NAMESPACE).items
    texts["pod specs"] = json.dumps([stack.api.sanitize_for_serialization(p.spec) for p in left])
    texts["watched pods"] = json.dumps(pods.versions)  # specs and statuses, as they went by
    return texts


def test_no_secret_leaks_anywhere(
    live_stack: Stack, proxy: FaultProxy, callbacks: CallbackReceiver
) -> None:
    account = live_stack.add_account(
        encrypted=True,
        endpoint=proxy.url,
        callback_url=callbacks.url(),
        signing_key="sign-me-" + os.urandom(8).hex(),
    )
    proxy.add_rule(
        Rule(
            action=Respond(503, "SlowDown", "wait"),
            method="PUT",
            query_contains="partNumber",
            after=2,
        )
    )
    with PodWatch(live_stack) as pods:
        live_stack.record(account, "secretive", os.urandom(17 * MIB))
        live_stack.wait_phase(account.namespace, "secretive", "Retrying", timeout=90)
        states = wait_for(lambda: _state_files(live_stack), what="a resume state file on the node")
        content_keys = {
            json.loads(p.read_text())["encryption"]["content_key"]
            for p in states
            if json.loads(p.read_text()).get("encryption")
        }
        assert content_keys
        assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in states), (
            "owner-only state files"
        )
        proxy.clear_rules()
        live_stack.wait_phase(account.namespace, "secretive", "Completed", timeout=90)

        # the two accounts below would be refused by their validation, and their
        # recordings would then wait without a pod: a validation the bucket cannot answer
        # (503) leaves them Ready, so their keys go all the way to an uploader pod
        proxy.add_rule(Rule(action=Respond(503, "SlowDown", "wait"), path_regex="validation"))
        denied = live_stack.add_account(
            secret_access_key="wrong-" + os.urandom(16).hex(), endpoint=proxy.url
        )
        live_stack.record(denied, "denied", os.urandom(1000))
        live_stack.wait_phase(denied.namespace, "denied", "Failed", timeout=60)
        # temporary credentials: moto refuses a session token on an IAM user's key, so this
        # upload fails (InvalidToken); the token still went through validation and a pod
        token = "IQoJb3JpZ2luX2VjE" + os.urandom(24).hex()
        tokened = live_stack.add_account(session_token=token, endpoint=proxy.url)
        live_stack.record(tokened, "tokened", os.urandom(1000))
        live_stack.wait_phase(tokened.namespace, "tokened", "Failed", "Completed", timeout=60)
        live_stack.wait_condition(account.namespace, "recordings", "secretive", "CallbackDelivered")

    assert pods.errors == [], "the pod watch had a gap"
    # secretive: a first pod and its retry; denied and tokened: one pod each
    assert len(pods.pods()) >= 4, f"the scan saw too few uploader pods: {pods.pods()}"
    assert pods.termination_messages(), "no final pod status (termination message) was seen"
    secrets = set(live_stack.secrets)
    assert token in secrets
    for key in content_keys:
        raw = base64.b64decode(key)
        secrets |= {key, raw.hex(), base64.urlsafe_b64encode(raw).decode()}
    # each pod's bearer token for asking the operator for more work
    handoff_tokens = {
        json.loads(p.read_text())["token"]
        for p in (live_stack.kubelet.root / "pods").glob("*/volumes/batch/handoff.json")
    }
    assert len(handoff_tokens) >= 4, "every pod was given a token of its own"
    secrets |= handoff_tokens
    found = [
        (where, s[:6] + "…")
        for where, text in _everything(live_stack, pods).items()
        for s in secrets
        if s in text
    ]
    assert found == [], f"secrets found in: {found}"
    assert len(secrets) >= 6
    # positive control: the scan finds them where they belong (the mounted batch Secret)
    mounted = "".join(
        p.read_text()
        for p in (live_stack.kubelet.root / "pods").glob("*/volumes/batch/credential-*")
    )
    assert any(s in mounted for s in live_stack.secrets)
    assert token in mounted, "the session token reached the uploader"
