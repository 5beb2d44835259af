"""A write the operator could not make is made later, even if no new event ever comes."""

from __future__ import annotations

import os

import pytest
from kubernetes import client as k8s

from tests.bed.stack import RELEASE, Stack
from tests.support.kube import wait_for

pytestmark = [pytest.mark.kube, pytest.mark.s3, pytest.mark.slow]


def test_a_recording_missed_while_writes_were_refused_is_picked_up_again(live_stack: Stack) -> None:
    account = live_stack.add_account()
    rbac = k8s.RbacAuthorizationV1Api(live_stack.api)
    role_name = f"{RELEASE}-operator"
    role = rbac.read_cluster_role(role_name)
    original: list[dict[str, list[str]]] = live_stack.api.sanitize_for_serialization(role)["rules"]
    # the operator may still watch and read, but not write Recording status
    crippled = [
        r
        for r in original
        if not any(res.startswith("recordings/status") for res in r.get("resources") or [])
    ]
    rbac.patch_cluster_role(role_name, {"rules": crippled})
    try:
        live_stack.record(account, "missed", os.urandom(3000))

        def finalizer_added() -> dict[str, object] | None:
            body = live_stack.get(account.namespace, "recordings", "missed")
            return body if body["metadata"].get("finalizers") else None

        # the operator saw it: it could add its finalizer, but not write the status
        body = wait_for(finalizer_added, what="the operator to see the recording")
        assert not body.get("status")
    finally:
        rbac.patch_cluster_role(role_name, {"rules": original})
    # nothing about the Recording changes now: only the periodic resync can find it
    status = live_stack.wait_phase(account.namespace, "missed", "Completed", timeout=60)["status"]
    assert status["mediaUrl"].endswith(".wav")
