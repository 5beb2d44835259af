"""Leader failover: how long recordings wait when the leading operator dies.

    python bench/failover.py [--rounds 5] [--lease-duration 10 --renew-deadline 7 --retry-period 2]

Brings up the local stack (real kube-apiserver + etcd, moto, stand-in nodes) with two
operator replicas. Each round SIGKILLs whichever replica leads, creates a Recording at
once, and measures from the kill to (1) the other replica holding the Lease and (2) its
first action: that Recording written `Pending`. The killed replica is then started
again, as the standby of the next round. Last, it measures the same for a clean stop
(SIGTERM, as in a rolling update), where the leader releases the Lease.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.bed.controlplane import ControlPlane
from tests.bed.s3_moto import MotoS3
from tests.bed.stack import Account, OperatorProcess, Stack
from tests.support.invariants import metric


def leads(operator: OperatorProcess) -> bool:
    try:
        return metric(operator.metrics(), "voicevault_leader") == 1
    except OSError:
        return False


def until(predicate: object, timeout: float = 120) -> float:
    """Poll `predicate` every 50 ms; the monotonic time it first held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return time.monotonic()
        time.sleep(0.05)
    raise SystemExit("timed out")


def one_round(
    stack: Stack, account: Account, leader: OperatorProcess, other: OperatorProcess, n: int
) -> tuple[float, float]:
    stack.put_media(stack.nodes[0], account.namespace, f"f{n}.wav", b"x" * 2048)
    killed = time.monotonic()
    leader.kill()
    stack.record(account, f"f{n}", b"x" * 2048, media_path=f"f{n}.wav")
    took = until(lambda: leads(other))

    def pending() -> bool:
        status = stack.get(account.namespace, "recordings", f"f{n}").get("status") or {}
        return bool(status.get("phase"))

    acted = until(pending)
    return took - killed, acted - killed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lease-duration", type=float, default=10)
    parser.add_argument("--renew-deadline", type=float, default=7)
    parser.add_argument("--retry-period", type=float, default=2)
    args = parser.parse_args(argv)
    timing = [
        f"--lease-duration={args.lease_duration}",
        f"--renew-deadline={args.renew_deadline}",
        f"--retry-period={args.retry_period}",
    ]
    lease, first = [], []
    with tempfile.TemporaryDirectory(prefix="vv-bench-failover-") as tmp:
        workdir = Path(tmp)
        with ControlPlane(workdir / "cp") as plane, MotoS3(workdir / "moto") as s3:
            stack = Stack(
                plane, s3, workdir / "stack", nodes=("node-a",), operator_args=timing
            ).start()
            try:
                account = stack.add_account(namespace="bench")
                replicas = [stack.operator, stack.add_standby()]
                until(lambda: leads(replicas[0]))
                for n in range(args.rounds):
                    leader, other = replicas[n % 2], replicas[(n + 1) % 2]
                    took, acted = one_round(stack, account, leader, other, n)
                    lease.append(took)
                    first.append(acted)
                    print(
                        f"round {n + 1}: Lease after {took:.1f} s, first action after {acted:.1f} s"
                    )
                    leader.start()  # back as the standby
                leader = replicas[args.rounds % 2]
                other = replicas[(args.rounds + 1) % 2]
                stopped = time.monotonic()
                leader.stop()
                handover = until(lambda: leads(other)) - stopped
            finally:
                stack.stop()
    print()
    print(
        f"lease {args.lease_duration:g} s, renew deadline {args.renew_deadline:g} s, "
        f"retry period {args.retry_period:g} s; {args.rounds} SIGKILLs of the leader"
    )
    print("| from the kill to | median | max |")
    print("|---|---:|---:|")
    print(
        f"| the standby holding the Lease | {statistics.median(lease):.1f} s | {max(lease):.1f} s |"
    )
    print(
        f"| its first action (a Recording written) | {statistics.median(first):.1f} s | {max(first):.1f} s |"
    )
    print(f"\nclean stop (SIGTERM, Lease released): the standby led after {handover:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
