"""The Lease is renewed on a thread of its own, against a real apiserver.

Under a burst the operator's event loop can run seconds behind. A renewal that waited for
a turn of that loop missed its deadline, and a healthy leader exited (the throughput
benchmark saw five exits in one burst). Here the operator's loop is held for longer than a
whole lease, and the leader must still renew, never call `on_lost`, and release the Lease
on a clean stop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from kubernetes import client as k8s

from voicevault.operator.kube import Kube
from voicevault.operator.leader import ElectionThread, LeaderElector
from voicevault.operator.leaselock import LeaseTiming

pytestmark = [pytest.mark.kube]

TIMING = LeaseTiming(lease_duration=4.0, renew_deadline=3.0, retry_period=0.5)


def _renewed(kube_api: Any, namespace: str) -> tuple[str | None, Any]:
    spec = k8s.CoordinationV1Api(kube_api).read_namespaced_lease("election", namespace).spec
    assert spec is not None
    return spec.holder_identity, spec.renew_time


def test_the_leader_renews_while_the_operator_loop_is_held(kube_api: Any, namespace: str) -> None:
    lost, leading = threading.Event(), threading.Event()
    led: list[str] = []
    kube = Kube(kube_api, workers=2)
    thread = ElectionThread(
        LeaderElector(kube, namespace=namespace, name="election", identity="a", timing=TIMING)
    )

    async def lead() -> None:
        led.append(threading.current_thread().name)  # on the operator's loop
        leading.set()

    async def operator() -> tuple[Any, Any, Any]:
        thread.start(lead, lost.set)
        assert await asyncio.to_thread(leading.wait, 30), "never led"
        before = _renewed(kube_api, namespace)
        # the operator's loop gets no turn for longer than a whole lease
        time.sleep(TIMING.lease_duration + 1)
        after = _renewed(kube_api, namespace)
        await thread.stop()
        return before, after, _renewed(kube_api, namespace)

    try:
        before, after, stopped = asyncio.run(operator())
    finally:
        kube.close(client=False)
    assert led == [threading.main_thread().name]
    assert before[0] == after[0] == "a"
    assert after[1] > before[1], "no renewal while the operator's loop was held"
    assert not lost.is_set()
    assert stopped[0] is None  # released on a clean stop: a standby need not wait
