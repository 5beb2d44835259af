"""A running uploader pod takes the work that queued for its node while it ran (#19)."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest
from kubernetes import watch

from tests.bed.faultproxy import Delay, FaultProxy, Respond, Rule
from tests.bed.stack import Account, Stack
from tests.bed.stack_fixtures import running
from tests.bed.tcpproxy import TcpProxy
from tests.support.invariants import metric
from tests.support.kube import as_dict, wait_for
from voicevault import API_GROUP, API_VERSION

pytestmark = [pytest.mark.kube, pytest.mark.s3, pytest.mark.slow]
PODS_CREATED = "voicevault_uploader_pods_created_total"
HANDED = "voicevault_uploader_recordings_handed_total"


class StatusChanges:
    """Every version of a namespace's Recordings from now on, in order, from a watch."""

    def __init__(self, stack: Stack, namespace: str) -> None:
        self.stack, self.namespace = stack, namespace
        self.seen: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        listed = as_dict(
            stack.custom.list_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace, "recordings"
            )
        )
        self._version = listed["metadata"]["resourceVersion"]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():  # short watches, each resumed where the last ended
                for event in watch.Watch().stream(
                    self.stack.custom.list_namespaced_custom_object,
                    API_GROUP,
                    API_VERSION,
                    self.namespace,
                    "recordings",
                    resource_version=self._version,
                    timeout_seconds=1,
                ):
                    body = event["raw_object"]
                    self.seen.append(body)
                    self._version = body["metadata"]["resourceVersion"]
        except Exception as exc:  # reported by the test: a gap would make it blind
            self.errors.append(repr(exc))

    def phases(self, name: str) -> list[tuple[str | None, int | None]]:
        """(phase, attempts) of each status-bearing version of `name` after its create;
        the watch stops first, so ask once the recordings are settled."""
        self._stop.set()
        self._thread.join(30)
        assert not self.errors, self.errors
        found = []
        for body in self.seen:
            status = body.get("status") or {}
            if body["metadata"]["name"] == name and status.get("phase"):
                found.append((status["phase"], status.get("attempts")))
        return found


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
    changes = StatusChanges(live_stack, account.namespace)
    try:
        live_stack.record(account, "first", os.urandom(3000))
        wait_for(lambda: hold.matched >= 1, timeout=60, what="the first upload to be under way")
        later = [f"later-{i}" for i in range(3)]
        for name in later:
            body = _queued_behind(live_stack, account, name)
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
    # the first batch was marked Scheduled; a handed one is claimed by the pod's one write
    assert changes.phases("first")[0] == ("Scheduled", 1)
    for name in later:
        assert changes.phases(name) == [("Completed", 1)], name


def test_a_handed_recording_the_pod_could_not_store_is_claimed_by_the_retry_write(
    live_stack: Stack, proxy: FaultProxy
) -> None:
    """The pod ends its attempt without a write of its own (a transient failure): the
    operator's Retrying write carries the claim, so the attempt counts and nothing waits."""
    account = live_stack.add_account(endpoint=proxy.url)
    release = threading.Event()
    hold = Rule(action=Delay(120.0, release=release), method="PUT", times=1)
    fail = Rule(action=Respond(503, "SlowDown", "wait"), method="PUT")  # after the held one
    proxy.add_rule(hold)
    proxy.add_rule(fail)
    changes = StatusChanges(live_stack, account.namespace)
    try:
        live_stack.record(account, "first", os.urandom(3000))
        wait_for(lambda: hold.matched >= 1, timeout=60, what="the first upload to be under way")
        _queued_behind(live_stack, account, "later")
    finally:
        release.set()
    retrying = live_stack.wait_phase(account.namespace, "later", "Retrying", timeout=90)
    assert retrying["status"]["attempts"] == 1
    assert not retrying["status"].get("upload"), "no pod holds it while it waits"
    fail.times = fail.applied  # S3 answers again
    done = live_stack.wait_phase(account.namespace, "later", "Completed", timeout=90)
    assert done["status"]["attempts"] == 2
    seen = changes.phases("later")
    assert seen[0] == ("Retrying", 1), seen
    assert seen[-1] == ("Completed", 2), seen


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


def test_a_handed_batch_whose_answer_was_lost_is_queued_again_as_it_was(
    live_stack: Stack, proxy: FaultProxy
) -> None:
    """The operator hands a batch and the answer never reaches the pod: nothing of it
    was written (its claims ride on the pod's writes), so it waits for the next pod as it
    was queued, accepted fields and all, with no attempt counted."""
    extra = list(live_stack.operator.extra_args)
    relay = TcpProxy(live_stack.operator.webhook_port).start()
    live_stack.operator.kill()
    live_stack.operator.extra_args = [
        *extra,
        f"--uploader-handoff-url=https://127.0.0.1:{relay.port}",
    ]
    try:
        running(live_stack)
        account = live_stack.add_account(endpoint=proxy.url)
        first_put, second_put = threading.Event(), threading.Event()
        proxy.add_rule(Rule(action=Delay(120.0, release=first_put), method="PUT", times=1))
        hold = Rule(action=Delay(120.0, release=second_put), method="PUT", times=1)
        proxy.add_rule(hold)
        pods_before = metric(live_stack.operator.metrics(), PODS_CREATED)
        try:
            live_stack.record(account, "first", os.urandom(3000))
            _queued_behind(live_stack, account, "handed")
            first_put.set()  # "first" is done; the pod asks and is handed "handed"
            wait_for(lambda: hold.matched >= 1, timeout=60, what="the handed upload under way")
            _queued_behind(live_stack, account, "lost")
            relay.cut_next_answer()  # the pod asks again: "lost" is handed, the answer lost
        finally:
            first_put.set()
            second_put.set()
        done = live_stack.wait_phase(account.namespace, "lost", "Completed", timeout=90)
        assert relay.answers_cut == 1
        status = done["status"]
        assert status["attempts"] == 1, "an answer never received is not an attempt"
        assert status.get("sid") and status.get("storage"), "its accepted fields were written"
        handed = live_stack.get(account.namespace, "recordings", "handed")["status"]
        assert status["upload"]["pod"] != handed["upload"]["pod"], "a new pod took it"
        assert metric(live_stack.operator.metrics(), PODS_CREATED) - pods_before == 2
    finally:
        live_stack.operator.kill()
        live_stack.operator.extra_args = extra
        relay.stop()
        running(live_stack)


def _queued_behind(stack: Stack, account: Account, name: str) -> dict[str, Any]:
    """Create a recording on the busy node; its body once it is queued there."""
    stack.record(account, name, os.urandom(3000))

    def queued() -> dict[str, Any] | None:
        body = stack.get(account.namespace, "recordings", name)
        return body if body["metadata"].get("finalizers") else None

    found: dict[str, Any] = wait_for(queued, timeout=30, what=f"{name} queued")
    return found
