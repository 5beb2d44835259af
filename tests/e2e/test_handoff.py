"""A running uploader pod takes the work that queued for its node while it ran (#19)."""

from __future__ import annotations

import functools
import os
import threading
from typing import Any

import pytest

from tests.bed.faultproxy import Delay, FaultProxy, Rule
from tests.bed.stack import Stack
from tests.bed.stack_fixtures import running
from tests.support.invariants import metric
from tests.support.kube import wait_for

pytestmark = [pytest.mark.kube, pytest.mark.s3, pytest.mark.slow]
PODS_CREATED = "voicevault_uploader_pods_created_total"
HANDED = "voicevault_uploader_recordings_handed_total"


def test_work_queued_behind_a_running_pod_goes_to_that_pod(
    live_stack: Stack, proxy: FaultProxy
) -> None:
    account = live_stack.add_account(endpoint=proxy.url)
    release = threading.Event()
    # the first upload's answer is held until the rest has queued behind its pod
    hold = Rule(action=Delay(120.0, release=release), method="PUT", times=1)
    proxy.add_rule(hold)
    before = live_stack.operator.metrics()
    pods_before, handed_before = metric(before, PODS_CREATED), metric(before, HANDED)
    try:
        live_stack.record(account, "first", os.urandom(3000))
        wait_for(lambda: hold.matched >= 1, timeout=60, what="the first upload to be under way")
        later = [f"later-{i}" for i in range(3)]
        for name in later:
            live_stack.record(account, name, os.urandom(3000))

        def queued(name: str) -> dict[str, Any] | None:
            body = live_stack.get(account.namespace, "recordings", name)
            return body if body["metadata"].get("finalizers") else None

        for name in later:
            body = wait_for(functools.partial(queued, name), timeout=30, what=f"{name} queued")
            assert not (body.get("status") or {}).get("phase"), "queued behind the busy pod"
    finally:
        release.set()
    done = {
        name: live_stack.wait_phase(account.namespace, name, "Completed", timeout=90)["status"]
        for name in ["first", *later]
    }
    carried_by = {status["upload"]["pod"] for status in done.values()}
    assert len(carried_by) == 1, carried_by
    assert all(status["attempts"] == 1 for status in done.values())
    after = live_stack.operator.metrics()
    assert metric(after, PODS_CREATED) - pods_before == 1
    assert metric(after, HANDED) - handed_before == len(later)


def test_work_queued_after_a_key_rotation_is_not_handed_to_the_pod_with_the_old_key(
    live_stack: Stack, proxy: FaultProxy
) -> None:
    """The running pod holds the keys it started with. Once the Secret changes, what
    queued behind it goes to a new pod with the new keys: with the old key revoked, the
    running pod's uploads would fail fatally and delete the media."""
    account = live_stack.add_account(endpoint=proxy.url)
    release = threading.Event()
    hold = Rule(action=Delay(120.0, release=release), method="PUT", times=1)
    proxy.add_rule(hold)
    try:
        live_stack.record(account, "first", os.urandom(3000))
        wait_for(lambda: hold.matched >= 1, timeout=60, what="the first upload to be under way")
        rotated = live_stack.s3.rotate(account.s3)  # type: ignore[attr-defined]
        live_stack.core.patch_namespaced_secret(
            "s3-writer-keys",
            account.namespace,
            {
                "stringData": {
                    "AWS_ACCESS_KEY_ID": rotated.access_key_id,
                    "AWS_SECRET_ACCESS_KEY": rotated.secret_access_key,
                }
            },
        )
        live_stack.secrets |= {rotated.secret_access_key}
        live_stack.record(account, "after", os.urandom(3000))
    finally:
        release.set()
    first = live_stack.wait_phase(account.namespace, "first", "Completed", timeout=90)["status"]
    after = live_stack.wait_phase(account.namespace, "after", "Completed", "Failed", timeout=90)[
        "status"
    ]
    assert after["phase"] == "Completed", after
    assert after["upload"]["pod"] != first["upload"]["pod"]
    assert after["attempts"] == 1


def test_a_pod_with_nothing_left_waits_for_the_next_recording_of_its_node(
    live_stack: Stack,
) -> None:
    """Its request for more is held while the node has no work: a recording that comes
    within the linger goes to the running pod instead of a new one. The linger is long
    here so that the second create surely lands inside it."""
    extra = list(live_stack.operator.extra_args)
    live_stack.operator.kill()
    live_stack.operator.extra_args = [*extra, "--uploader-linger=30"]
    try:
        running(live_stack)
        account = live_stack.add_account()
        pods_before = metric(live_stack.operator.metrics(), PODS_CREATED)
        live_stack.record(account, "first", os.urandom(3000))
        first = live_stack.wait_phase(account.namespace, "first", "Completed", timeout=90)
        live_stack.record(account, "second", os.urandom(3000))
        second = live_stack.wait_phase(account.namespace, "second", "Completed", timeout=90)
        assert second["status"]["upload"]["pod"] == first["status"]["upload"]["pod"]
        assert second["status"]["attempts"] == 1
        after = live_stack.operator.metrics()
        assert metric(after, PODS_CREATED) - pods_before == 1
        assert metric(after, HANDED) >= 1
    finally:
        live_stack.operator.kill()
        live_stack.operator.extra_args = extra
        running(live_stack)
