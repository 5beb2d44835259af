"""Two operators, one leader: a standby acts only once it holds the Lease, and a leader
that loses the apiserver stops before its lease can expire."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s

from tests.bed.faultproxy import Delay, FaultProxy, Rule
from tests.bed.stack import SYSTEM_NAMESPACE, OperatorProcess, Stack
from tests.support.callbacks import CallbackReceiver
from tests.support.invariants import check, metric, settled
from tests.support.kube import wait_for

pytestmark = [pytest.mark.kube, pytest.mark.s3, pytest.mark.slow]
LEASE = "voicevault-operator"
WRITES = ("patch", "create", "delete", "update")


def leads(operator: OperatorProcess) -> bool:
    try:
        scraped = operator.metrics()
    except OSError:  # relaunched after a lost Lease and not listening yet: not leading
        return False
    return metric(scraped, "voicevault_leader") == 1


def writes(operator: OperatorProcess) -> float:
    """API writes this operator made, other than to its Lease."""
    text = operator.metrics()
    return sum(
        metric(text, "voicevault_kube_requests_total", verb=verb) for verb in WRITES
    ) - metric(text, "voicevault_kube_requests_total", resource="leases", verb="update")


def holder(stack: Stack) -> Any:
    lease = k8s.CoordinationV1Api(stack.api).read_namespaced_lease(LEASE, SYSTEM_NAMESPACE)
    return lease.spec


@pytest.fixture
def standby(live_stack: Stack) -> Iterator[OperatorProcess]:
    wait_for(lambda: leads(live_stack.operator), timeout=30, what="operator-0 to lead")
    second = live_stack.add_standby()
    try:
        yield second
    finally:
        live_stack.drop_standbys()  # a clean stop: it releases the Lease if it holds it
        if not live_stack.operator.alive:
            live_stack.operator.start()
        live_stack.api_relay.heal()
        wait_for(lambda: leads(live_stack.operator), timeout=30, what="operator-0 to lead")


def _record_batch(
    stack: Stack, proxy: FaultProxy, callbacks: CallbackReceiver, count: int
) -> tuple[Any, dict[str, bytes], dict[str, str]]:
    account = stack.add_account(endpoint=proxy.url, callback_url=callbacks.url())
    proxy.add_rule(Rule(action=Delay(0.4), method="PUT"))  # slow every upload a little
    data = {f"call-{i}": os.urandom(2000 + i) for i in range(count)}
    node_of = {name: stack.nodes[i % 2] for i, name in enumerate(data)}
    for name, payload in data.items():
        stack.record(account, name, payload, node=node_of[name])
    return account, data, node_of


def _each_once(stack: Stack, account: Any, names: list[str], callbacks: CallbackReceiver) -> None:
    def stored() -> Counter[str]:
        return Counter(
            str(e.involved_object.name)
            for e in stack.events(account.namespace)
            if e.reason == "Stored"
        )

    wait_for(lambda: len(stored()) == len(names), timeout=60, what="a Stored event for each")
    assert stored() == Counter(dict.fromkeys(names, 1)), "each recording stored exactly once"
    for name in names:
        sid: str = stack.get(account.namespace, "recordings", name)["status"]["sid"]

        def delivered(sid: str = sid) -> list[Any]:
            return list(callbacks.for_recording(sid))

        sent = wait_for(delivered, what="its callback")
        # at least once across a crash; every delivery of one outcome says the same
        assert len({tuple(sorted(r.params.items())) for r in sent}) == 1


def test_a_standby_acts_only_after_the_leader_dies_and_then_finishes_its_batch(
    live_stack: Stack,
    standby: OperatorProcess,
    proxy: FaultProxy,
    callbacks: CallbackReceiver,
) -> None:
    assert not leads(standby)
    idle = writes(standby)
    account, data, node_of = _record_batch(live_stack, proxy, callbacks, 8)
    names = list(data)

    def in_flight() -> bool:
        phases = {
            (live_stack.get(account.namespace, "recordings", n).get("status") or {}).get("phase")
            for n in names
        }
        return bool(phases & {"Scheduled", "Uploading"})

    wait_for(in_flight, timeout=60, what="an uploader pod at work")
    assert writes(standby) == idle, "a standby wrote to the API"
    live_stack.operator.kill()
    wait_for(lambda: leads(standby), timeout=30, what="the standby to take the Lease")
    assert holder(live_stack).holder_identity == standby.identity
    proxy.clear_rules()
    wait_for(lambda: settled(live_stack, account.namespace, names), timeout=120, what="settled")
    check(live_stack, account, data, node_of).assert_clean()
    _each_once(live_stack, account, names, callbacks)


def test_a_leader_cut_off_from_the_apiserver_exits_before_another_takes_over(
    live_stack: Stack,
    standby: OperatorProcess,
    proxy: FaultProxy,
    callbacks: CallbackReceiver,
) -> None:
    account, data, node_of = _record_batch(live_stack, proxy, callbacks, 8)
    names = list(data)
    live_stack.api_relay.partition()  # the apiserver is unreachable to the leader alone
    # it exits (and, as a kubelet would, the bed starts it again, now a standby)
    exited = wait_for(lambda: live_stack.operator.lease_losses, timeout=30, what="an exit")[0]
    assert "lost the leader lease" in live_stack.operator.log()
    wait_for(lambda: leads(standby), timeout=30, what="the standby to take the Lease")
    spec = holder(live_stack)
    assert spec.holder_identity == standby.identity
    # it exited on its renew deadline, before its lease expired and anyone could begin
    assert spec.acquire_time > exited
    live_stack.api_relay.heal()
    proxy.clear_rules()
    wait_for(lambda: settled(live_stack, account.namespace, names), timeout=120, what="settled")
    check(live_stack, account, data, node_of).assert_clean()
    _each_once(live_stack, account, names, callbacks)


def test_a_leader_stopped_cleanly_hands_the_lease_over_at_once(
    live_stack: Stack, standby: OperatorProcess
) -> None:
    stopped = time.monotonic()
    live_stack.operator.stop()  # SIGTERM, as a rolling update does
    wait_for(lambda: leads(standby), timeout=30, what="the standby to take the Lease")
    # released, not expired: well within one lease duration (10 s)
    assert time.monotonic() - stopped < 8
    account = live_stack.add_account()
    live_stack.record(account, "after-handover", b"x" * 4000)
    live_stack.wait_phase(account.namespace, "after-handover", "Completed", timeout=60)
