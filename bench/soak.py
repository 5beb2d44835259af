"""Soak: a steady stream of recordings through the whole stack while faults are injected.

    python bench/soak.py --minutes 20

Runs outside the test command. Brings up the local stack (real apiserver + etcd, moto
with the seed policy behind a fault proxy, the operator process, four stand-in nodes),
creates a recording every `--interval` seconds (mixed sizes, half of them encrypted),
and injects faults on a schedule: S3 503 bursts, connection resets and uploader pods
killed all along; operator SIGKILLs in the first quarter and two apiserver restarts in
the first half. At the end it waits for every recording to settle and reports
recordings processed, faults injected by kind, losses and corrupted objects (both must be
0), and the operator's RSS over time with its trend.

Completed recordings are checked (decrypted and compared, one object, no open upload,
media gone) once they are `--retire-after` seconds old, then deleted with their object,
as a cluster that prunes stored recordings would: the population stays steady, so what
the operator keeps per existing recording does not pass for a leak. The rest are checked
at the end, and every deleted recording must be gone (its finalizer released).

The memory verdict is taken over the second half, the steady window: the stream and the
S3 and pod faults go on, but nothing restarts. An apiserver restart makes kopf list every
object again, which raises the high-water mark once; a leak shows as a slope where
nothing but work happens. Beside RSS the operator's live Python heap blocks are sampled
(`voicevault_python_heap_blocks`): live state that keeps growing is a leak, RSS growth
without it is the allocator's high-water mark. Exit status: 0 clean, 1 a recording lost
or corrupted, 2 the operator's memory kept growing in the steady window: the mean of the
last third of the RSS samples over 10% above the mean of the first third, or the live
heap's floor (the least sample of a third; between full collections the blocks include
cyclic garbage) over 5% above.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.bed.controlplane import ControlPlane
from tests.bed.faultproxy import FaultProxy, ResetConnection, Respond, Rule
from tests.bed.kubelet import kill_leftovers
from tests.bed.s3_moto import MotoS3
from tests.bed.stack import Account, Stack
from tests.support import invariants
from tests.support.kube import as_dict, wait_for
from voicevault import API_GROUP, API_VERSION

MIB = 1 << 20


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_trend(samples: list[tuple[float, float]]) -> tuple[float, float, float]:
    """(MiB per hour by least squares, mean of the first third, mean of the last third)."""
    if len(samples) < 3:
        return 0.0, samples[0][1] if samples else 0.0, samples[-1][1] if samples else 0.0
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_m = sum(m for _, m in samples) / n
    spread = sum((t - mean_t) ** 2 for t, _ in samples) or 1.0
    slope = sum((t - mean_t) * (m - mean_m) for t, m in samples) / spread
    third = max(1, n // 3)
    first = sum(m for _, m in samples[:third]) / third
    last = sum(m for _, m in samples[-third:]) / third
    return slope * 3600, first, last


def grows(per_hour: float, first: float, last: float, limit: float) -> bool:
    """The verdict: rising, and the last third over `limit` (0.10: 10%) above the first."""
    return per_hour > 0 and last > first * (1 + limit)


class Sample(NamedTuple):
    elapsed: float
    start: int  # which operator process: 1 is the first, each restart adds one
    rss: float  # MiB
    blocks: float  # live Python heap blocks, cyclic garbage not yet collected included
    full_gcs: float  # generation-2 collections so far


def judge_memory(samples: list[Sample], window_from: float) -> bool:
    """Print the last operator run's memory and its verdict over the steady window; True
    when it kept growing.

    RSS is judged by the means of the first and last thirds. Live heap blocks are judged
    by their floor (the least in each third): between full collections they include
    cyclic garbage, and those peaks are not state the operator keeps.
    """
    last_start = max(x.start for x in samples)
    run = [x for x in samples if x.start == last_start]
    steady = [x for x in run if x.elapsed >= window_from] or run
    print(
        f"operator RSS (last run)  start {run[0].rss:.0f} MiB at {run[0].elapsed:.0f}s, "
        f"end {run[-1].rss:.0f} MiB at {run[-1].elapsed:.0f}s, "
        f"max {max(x.rss for x in run):.0f} MiB"
    )
    print("operator RSS samples     " + " ".join(f"{x.rss:.0f}" for x in run))
    print("heap blocks (thousands) " + " ".join(f"{x.blocks / 1000:.0f}" for x in run))
    per_hour, first, last = rss_trend([(x.elapsed, x.rss) for x in steady])
    rss_grows = grows(per_hour, first, last, 0.10)
    print(
        f"operator RSS trend       from {steady[0].elapsed:.0f}s (steady window): "
        f"{per_hour:+.1f} MiB/h; mean of the first third {first:.0f} MiB, "
        f"last third {last:.0f} MiB: " + ("GROWING" if rss_grows else "no growth trend")
    )
    third = max(1, len(steady) // 3)
    floor_first = min(x.blocks for x in steady[:third])
    floor_last = min(x.blocks for x in steady[-third:])
    heap_grows = floor_last > floor_first * 1.05
    print(
        f"live heap floor          first third {floor_first:,.0f} blocks, last third "
        f"{floor_last:,.0f} ({(floor_last / floor_first - 1) * 100:+.1f}%): "
        + ("GROWING" if heap_grows else "no growth trend")
    )
    rises = [(before, after) for before, after in pairwise(steady) if after.rss >= before.rss + 1]
    at_peak = sum(
        1
        for before, after in rises
        if after.full_gcs > before.full_gcs or after.blocks > floor_first * 1.10
    )
    print(
        f"RSS steps of 1 MiB+      {len(rises)} in the window, {at_peak} of them at a heap peak "
        f"or a full collection; full collections in the window: "
        f"{steady[-1].full_gcs - steady[0].full_gcs:.0f}"
    )
    return rss_grows or heap_grows


class Soak:
    def __init__(self, stack: Stack, proxy: FaultProxy, accounts: list[Account], seed: int) -> None:
        self.stack = stack
        self.proxy = proxy
        self.accounts = accounts
        self.rng = random.Random(seed)
        self.faults: Counter[str] = Counter()
        self.pod_kills_missed = 0  # no uploader pod ran within 10 s
        self.data: dict[tuple[int, str], bytes] = {}
        self.node_of: dict[tuple[int, str], str] = {}
        self.created: dict[tuple[int, str], float] = {}
        self.outcome = invariants.Outcome()
        self.retired: list[tuple[int, str]] = []
        self.memory: list[Sample] = []

    def record(self, index: int) -> None:
        account_index = index % len(self.accounts)
        account = self.accounts[account_index]
        name = f"soak-{index:05d}"
        size = self.rng.choice([0, 1000, 50_000, 400_000, 17 * MIB + index])
        data = os.urandom(size)
        node = self.stack.nodes[index % len(self.stack.nodes)]
        self.stack.record(account, name, data, node=node)
        self.data[(account_index, name)] = data
        self.node_of[(account_index, name)] = node
        self.created[(account_index, name)] = time.monotonic()

    def retire(self, before: float) -> None:
        """Check the Completed recordings created before `before`, then delete each with
        its object."""
        for number, account in enumerate(self.accounts):
            due = [n for (a, n), t in self.created.items() if a == number and t < before]
            statuses = {
                n: self.stack.get(account.namespace, "recordings", n).get("status") or {}
                for n in due
            }
            keys = {
                n: status["storage"]["objectKey"]
                for n, status in statuses.items()
                if status.get("phase") == "Completed"
            }
            if not keys:
                continue
            done = {n: self.data[(number, n)] for n in keys}
            node_of = {n: self.node_of[(number, n)] for n in keys}
            self.outcome.add(invariants.check(self.stack, account, done, node_of))
            client = self.stack.s3.admin_client()
            for name in done:
                self.stack.delete(account.namespace, "recordings", name)
                client.delete_object(Bucket=account.s3.bucket, Key=keys[name])
                for table in (self.data, self.node_of, self.created):
                    del table[(number, name)]
                self.retired.append((number, name))

    def not_gone(self) -> list[str]:
        """Deleted recordings still there (a finalizer never released)."""
        left = []
        for number, account in enumerate(self.accounts):
            listed = as_dict(
                self.stack.custom.list_namespaced_custom_object(
                    API_GROUP, API_VERSION, account.namespace, "recordings"
                )
            )
            names = {item["metadata"]["name"] for item in listed["items"]}
            left += [n for a, n in self.retired if a == number and n in names]
        return left

    def inject(self, elapsed: float, total: float) -> None:
        roll = self.rng.random()
        if roll < 0.25:
            self.proxy.add_rule(
                Rule(action=Respond(503, "SlowDown", "soak"), times=self.rng.randint(3, 15))
            )
            self.faults["S3 503 SlowDown burst"] += 1
        elif roll < 0.45:
            self.proxy.add_rule(
                Rule(
                    action=ResetConnection(after_request_bytes=128 * 1024),
                    query_contains="partNumber",
                    times=1,
                )
            )
            self.faults["S3 connection reset mid-part"] += 1
        elif roll < 0.65:
            # a pod lives a few seconds here: wait for one (up to 10 s) to have one to kill
            deadline = time.monotonic() + 10
            while not self.stack.kubelet.running_pods() and time.monotonic() < deadline:
                threading.Event().wait(0.1)
            killed = kill_leftovers(self.stack.kubelet.root)
            self.faults["uploader pod killed"] += len(killed)
            self.pod_kills_missed += not killed
        elif roll < 0.75 and elapsed < total / 4:
            self.stack.operator.kill()
            self.faults["operator SIGKILL"] += 1
            self.stack.operator.start()
        elif roll < 0.78 and self.faults["apiserver restart"] < 2 and elapsed < total / 2:
            self.stack.cp.restart_apiserver()
            self.faults["apiserver restart"] += 1

    def sample(self, elapsed: float) -> None:
        process = self.stack.operator.process
        if process is None or not process.alive:
            return
        try:
            scrape = self.stack.operator.metrics()
        except OSError:
            return  # restarting: the next sample has it
        self.memory.append(
            Sample(
                elapsed,
                self.stack.operator.starts,
                rss_mib(process.pid),
                invariants.metric(scrape, "voicevault_python_heap_blocks"),
                invariants.metric(scrape, "python_gc_collections_total", generation="2"),
            )
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between recordings")
    parser.add_argument("--fault-every", type=float, default=20.0, help="seconds between faults")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument(
        "--retire-after",
        type=float,
        default=120.0,
        help="seconds after which a Completed recording is checked and deleted (0: never)",
    )
    args = parser.parse_args()
    total = args.minutes * 60
    with tempfile.TemporaryDirectory(prefix="vv-soak-") as tmp:
        workdir = Path(tmp)
        with (
            ControlPlane(workdir / "cp") as plane,
            MotoS3(workdir / "moto") as s3,
            FaultProxy(s3.endpoint_url) as proxy,
        ):
            nodes = ("node-a", "node-b", "node-c", "node-d")
            stack = Stack(
                plane,
                s3,
                workdir / "stack",
                nodes=nodes,
                # a resync every minute (the test bed's is 3 s, the default 10 min)
                operator_args=[
                    "--poll-interval",
                    "1",
                    "--resync-interval",
                    "60",
                    "--log-level",
                    "warning",
                ],
            ).start()
            try:
                accounts = [
                    stack.add_account(namespace="soak-plain", endpoint=proxy.url),
                    stack.add_account(
                        namespace="soak-encrypted", endpoint=proxy.url, encrypted=True
                    ),
                ]
                soak = Soak(stack, proxy, accounts, args.seed)
                started = time.monotonic()
                next_fault = args.fault_every
                next_sample = 0.0
                index = 0
                while (elapsed := time.monotonic() - started) < total:
                    soak.record(index)
                    index += 1
                    if elapsed >= next_fault:
                        soak.inject(elapsed, total)
                        next_fault += args.fault_every
                    if elapsed >= next_sample:
                        if args.retire_after:
                            soak.retire(time.monotonic() - args.retire_after)
                        soak.sample(elapsed)
                        next_sample += 30
                        last = soak.memory[-1] if soak.memory else Sample(0, 0, 0, 0, 0)
                        print(
                            f"{elapsed:7.0f}s  recordings {index:5d} ({len(soak.data)} exist)  "
                            f"faults {sum(soak.faults.values()):3d}  "
                            f"operator RSS {last.rss:.0f} MiB, heap blocks {last.blocks:,.0f}",
                            flush=True,
                        )
                    threading.Event().wait(args.interval)
                proxy.clear_rules()
                print("stream stopped; waiting for every recording to settle", flush=True)
                for number, account in enumerate(accounts):
                    names = [n for (a, n) in soak.data if a == number]
                    namespace = account.namespace

                    def all_settled(ns: str = namespace, ns_names: list[str] = names) -> bool:
                        return invariants.settled(stack, ns, ns_names)

                    wait_for(
                        all_settled, timeout=1800, interval=5, what="every recording to settle"
                    )
                soak.sample(time.monotonic() - started)
                outcome = soak.outcome
                for number, account in enumerate(accounts):
                    data = {n: d for (a, n), d in soak.data.items() if a == number}
                    node_of = {n: node for (a, n), node in soak.node_of.items() if a == number}
                    outcome.add(invariants.check(stack, account, data, node_of))
                try:
                    wait_for(
                        lambda: not soak.not_gone(), timeout=120, what="deleted recordings gone"
                    )
                    stuck = []
                except AssertionError:
                    stuck = soak.not_gone()
                lost = outcome.lost + outcome.open_uploads + [f"{n}: never deleted" for n in stuck]
                corrupt = outcome.corrupt + outcome.duplicates
                print()
                print(
                    f"duration                 {args.minutes:.0f} min, one recording every {args.interval}s"
                )
                print(
                    f"recordings processed     {len(soak.retired) + len(soak.data)}  "
                    f"{dict(outcome.phases)}; {len(soak.retired)} checked and deleted along the way"
                )
                for kind, count in sorted(soak.faults.items()):
                    print(f"fault: {kind:24s} {count}")
                print(f"pod kills, none running  {soak.pod_kills_missed}")
                print(f"lost                     {len(lost)} {lost[:5]}")
                print(f"corrupted                {len(corrupt)} {corrupt[:5]}")
                growing = judge_memory(soak.memory, total / 2)
                if lost or corrupt:
                    return 1
                return 2 if growing else 0
            finally:
                stack.stop()


if __name__ == "__main__":
    raise SystemExit(main())
