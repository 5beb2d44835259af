"""Faults on the Kubernetes side and the S3 side, against the whole stack.

After each: every recording ends Completed (object exact, media gone), Cached (media on
its node) or Failed for a fatal cause; no finished recording leaves an open upload.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Iterator

import pytest

from tests.bed.faultproxy import Delay, FaultProxy, ResetConnection, Respond, Rule
from tests.bed.kubelet import FakeKubelet, kill_leftovers
from tests.bed.stack import Account, Stack
from tests.support import invariants
from tests.support.faultledger import FaultLedger
from tests.support.kube import apiserver_request_counts, wait_for
from voicevault import API_GROUP, API_VERSION

pytestmark = [pytest.mark.kube, pytest.mark.s3, pytest.mark.slow]
MIB = 1 << 20


def _record_many(
    stack: Stack, account: Account, count: int, big_every: int = 3, prefix: str = "rec"
) -> tuple[dict[str, bytes], dict[str, str]]:
    """`count` recordings spread over the nodes; every `big_every`-th is multipart."""
    data, node_of = {}, {}
    for i in range(count):
        name = f"{prefix}-{i:03d}"
        data[name] = os.urandom(17 * MIB + i if i % big_every == 0 else 2000 + i)
        node_of[name] = stack.nodes[i % len(stack.nodes)]
        stack.record(account, name, data[name], node=node_of[name])
    return data, node_of


def _wait_settled(stack: Stack, namespace: str, names: list[str], timeout: float = 240) -> None:
    wait_for(
        lambda: invariants.settled(stack, namespace, names),
        timeout=timeout,
        interval=1,
        what="every recording to settle",
    )


def _settled_clean(
    stack: Stack,
    account: Account,
    data: dict[str, bytes],
    node_of: dict[str, str],
    phases: dict[str, int] | None = None,
) -> invariants.Outcome:
    """Every recording settles, nothing is lost, corrupt or left open, and they end in
    `phases` (default: all Completed)."""
    _wait_settled(stack, account.namespace, list(data))
    outcome = invariants.check(stack, account, data, node_of)
    outcome.assert_clean()
    assert outcome.phases == (phases or {"Completed": len(data)})
    return outcome


@pytest.fixture
def kubelet_restored(live_stack: Stack) -> Iterator[Stack]:
    """Puts a fresh stand-in kubelet back if a test took it away."""
    yield live_stack
    if not live_stack.kubelet.running:
        live_stack.kubelet = FakeKubelet(
            live_stack.cp.admin_kubeconfig, live_stack.kubelet.root, list(live_stack.nodes)
        )
        live_stack.kubelet.start()


def test_apiserver_restarts_while_uploads_run(
    live_stack: Stack, proxy: FaultProxy, ledger: FaultLedger
) -> None:
    account = live_stack.add_account(endpoint=proxy.url, encrypted=True)
    proxy.add_rule(Rule(action=Delay(0.5), method="PUT"))
    data, node_of = _record_many(live_stack, account, 8)
    wait_for(live_stack.uploader_pods, what="uploader pods running")
    for _ in range(2):
        live_stack.cp.restart_apiserver()
        ledger.add("apiserver restart")
    proxy.clear_rules()
    _settled_clean(live_stack, account, data, node_of)
    ledger.recordings = len(data)


def test_conflicting_writes_on_recordings(live_stack: Stack, ledger: FaultLedger) -> None:
    """Someone else keeps writing the Recordings: every guarded write meets 409s and retries."""
    account = live_stack.add_account()
    stop = threading.Event()
    writes = 0

    def meddle() -> None:
        nonlocal writes
        while not stop.is_set():
            for item in live_stack.custom.list_namespaced_custom_object(
                API_GROUP, API_VERSION, account.namespace, "recordings"
            )["items"]:  # type: ignore[index]
                try:
                    live_stack.custom.patch_namespaced_custom_object(
                        API_GROUP,
                        API_VERSION,
                        account.namespace,
                        "recordings",
                        item["metadata"]["name"],
                        {"metadata": {"annotations": {"example.com/touched": str(writes)}}},
                    )
                    writes += 1
                except Exception:  # noqa: S110 - deleted or conflicting: keep meddling
                    pass

    before = apiserver_request_counts(live_stack.cp)
    thread = threading.Thread(target=meddle, daemon=True)
    thread.start()
    try:
        data, node_of = _record_many(live_stack, account, 10)
        _wait_settled(live_stack, account.namespace, list(data))
    finally:
        stop.set()
        thread.join(10)
    after = apiserver_request_counts(live_stack.cp)
    conflicts = sum(
        v - before.get(k, 0) for k, v in after.items() if k[1] == "recordings" and k[3] == "409"
    )
    ledger.add("409 conflicts met by operator and uploaders", int(conflicts))
    ledger.add("conflicting writes", writes)
    assert conflicts > 0, "the meddling produced real conflicts"
    _settled_clean(live_stack, account, data, node_of)
    ledger.recordings = len(data)


def test_operator_sigkilled_at_random_points(
    live_stack: Stack, proxy: FaultProxy, ledger: FaultLedger
) -> None:
    account = live_stack.add_account(endpoint=proxy.url, callback_url=None)
    proxy.add_rule(Rule(action=Delay(0.2), method="PUT"))
    rng = random.Random(7)
    data: dict[str, bytes] = {}
    node_of: dict[str, str] = {}
    for round_ in range(4):
        more, nodes = _record_many(live_stack, account, 5, prefix=f"round{round_}")
        data |= more
        node_of |= nodes
        names = list(data)
        wait_for(
            lambda: (
                live_stack.uploader_pods()
                or invariants.settled(live_stack, account.namespace, names)  # noqa: B023
            ),
            what="work in flight",
        )
        threading.Event().wait(rng.uniform(0.0, 1.5))  # a random point in the batch
        live_stack.operator.kill()
        ledger.add("operator SIGKILL")
        live_stack.operator.start()
    proxy.clear_rules()
    _settled_clean(live_stack, account, data, node_of)
    ledger.recordings = len(data)


def test_uploader_pods_killed_repeatedly(
    live_stack: Stack, proxy: FaultProxy, ledger: FaultLedger
) -> None:
    account = live_stack.add_account(endpoint=proxy.url)
    proxy.add_rule(Rule(action=Delay(0.6), method="PUT", query_contains="partNumber"))
    data, node_of = _record_many(live_stack, account, 6, big_every=1)
    for _ in range(3):
        wait_for(live_stack.kubelet.running_pods, timeout=90, what="an uploader pod running")
        killed = kill_leftovers(live_stack.kubelet.root)
        ledger.add("uploader pod killed", len(killed))
    proxy.clear_rules()
    _settled_clean(live_stack, account, data, node_of)
    ledger.recordings = len(data)


def test_s3_storms_resets_and_an_outage(
    live_stack: Stack, proxy: FaultProxy, ledger: FaultLedger
) -> None:
    account = live_stack.add_account(endpoint=proxy.url, encrypted=True)
    proxy.add_rule(Rule(action=Respond(503, "SlowDown", "slow down"), times=40))
    proxy.add_rule(
        Rule(
            action=ResetConnection(after_request_bytes=256 * 1024),
            query_contains="partNumber",
            times=6,
        )
    )
    data, node_of = _record_many(live_stack, account, 9)
    wait_for(lambda: proxy.stats().faults_injected.get("Respond", 0) >= 20, what="the storm to hit")
    proxy.pause()
    ledger.add("S3 outage (server gone)")
    wait_for(
        lambda: any(
            (live_stack.get(account.namespace, "recordings", n).get("status") or {}).get("phase")
            == "Retrying"
            for n in data
        ),
        what="a failure during the outage",
    )
    proxy.resume()
    _settled_clean(live_stack, account, data, node_of)
    for kind, count in proxy.stats().faults_injected.items():
        ledger.add(f"S3 {kind}", count)
    ledger.recordings = len(data)


def test_credentials_revoked_mid_upload_fail_fatally(
    live_stack: Stack, proxy: FaultProxy, ledger: FaultLedger
) -> None:
    account = live_stack.add_account(endpoint=proxy.url)
    proxy.add_rule(Rule(action=Delay(1.0), method="PUT", query_contains="partNumber"))
    data, node_of = _record_many(live_stack, account, 2, big_every=1)
    wait_for(lambda: live_stack.open_uploads(account), what="a multipart upload under way")
    live_stack.s3.revoke(account.s3)  # type: ignore[attr-defined]
    ledger.add("credentials revoked mid-upload")
    proxy.clear_rules()
    _wait_settled(live_stack, account.namespace, list(data))
    outcome = invariants.check(live_stack, account, data, node_of)
    assert not outcome.lost and not outcome.corrupt
    assert outcome.phases == {"Failed": 2}
    for name in data:
        status = live_stack.get(account.namespace, "recordings", name)["status"]
        assert status["errorCode"] == 16112, status
    ledger.recordings = len(data)


def test_node_harness_gone_longer_than_the_window(
    kubelet_restored: Stack, ledger: FaultLedger
) -> None:
    stack = kubelet_restored
    account = stack.add_account(
        retry={"windowSeconds": 25, "initialBackoffSeconds": 2, "maxBackoffSeconds": 5}
    )
    # a pod still finishing an earlier test's batch would die with the harness, and with
    # no node controller in the bed to evict it, stay Running and hold its node for good
    wait_for(lambda: not stack.uploader_pods(), timeout=60, what="earlier uploader pods gone")
    stack.kubelet.stop()  # the node's kubelet is gone: pods bound there never start
    ledger.add("node harness gone")
    data, node_of = _record_many(stack, account, 3, big_every=100)

    def window_over() -> dict[str, object] | None:
        if invariants.settled(stack, account.namespace, list(data)):
            return {"settled": True}
        phases = {n: stack.get(account.namespace, "recordings", n).get("status") for n in data}
        seen[:] = [phases, [p.metadata and p.metadata.name for p in stack.uploader_pods()]]
        return None

    seen: list[object] = []
    try:
        wait_for(window_over, timeout=180, interval=1, what="the window to end")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; statuses and uploader pods: {seen}") from None
    outcome = invariants.check(stack, account, data, node_of)
    outcome.assert_clean()
    assert outcome.phases == {"Cached": 3}, "media kept on the node, nothing lost"
    status = stack.get(account.namespace, "recordings", "rec-000")["status"]
    assert "did not start" in status["errorMessage"]
    stack.kubelet = FakeKubelet(stack.cp.admin_kubeconfig, stack.kubelet.root, list(stack.nodes))
    stack.kubelet.start()
    for name in data:
        stack.custom.patch_namespaced_custom_object(
            API_GROUP,
            API_VERSION,
            account.namespace,
            "recordings",
            name,
            {"metadata": {"annotations": {"voicevault.io/retry": "after-node-back"}}},
        )
    _wait_settled_completed = lambda: all(  # noqa: E731
        (stack.get(account.namespace, "recordings", n).get("status") or {}).get("phase")
        == "Completed"
        for n in data
    )
    wait_for(_wait_settled_completed, timeout=120, what="Completed after the manual retry")
    invariants.check(stack, account, data, node_of).assert_clean()
    ledger.recordings = len(data)
