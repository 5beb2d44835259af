"""Operator memory with many unrelated Secrets in the cluster (Helm-release sized).

    python bench/secret_memory.py [--secrets 2000] [--size-kib 256] [--settle 30]

Brings up the local stack (real kube-apiserver + etcd, moto, the operator) with one
account, then measures the operator twice in one run, side by side: started on a cluster
with no unrelated Secrets, then restarted after `--secrets` Secrets of `--size-kib` KiB
each were created in other namespaces. For each start it reports the peak RSS (VmHWM)
over the first `--settle` seconds and the RSS at the end of them, and how many Secret
bodies the operator read (`voicevault_kube_requests_total{verb="get",resource="secrets"}`)
and how many bytes its Secret watch received, when the operator exports those.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubernetes import client as k8s

from tests.bed.controlplane import ControlPlane
from tests.bed.s3_moto import MotoS3
from tests.bed.stack import Stack
from tests.support.invariants import metric


def rss_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(stack: Stack, settle: float) -> dict[str, float]:
    """Restart the operator and sample it for `settle` seconds."""
    stack.operator.stop()
    stack.operator.start()
    pid = stack.operator.process.pid  # type: ignore[union-attr]
    end = time.monotonic() + settle
    while time.monotonic() < end:
        time.sleep(0.5)
    text = stack.operator.metrics()
    return {
        "peak_mib": rss_mib(pid, "VmHWM"),
        "rss_mib": rss_mib(pid, "VmRSS"),
        "secret_gets": metric(
            text, "voicevault_kube_requests_total", verb="get", resource="secrets"
        ),
        "watch_bytes": metric(text, "voicevault_secret_watch_bytes_total"),
    }


def fill(stack: Stack, count: int, size: int) -> None:
    namespaces = [f"unrelated-{i:02d}" for i in range(20)]
    for ns in namespaces:
        stack.core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=ns)))
    blob = base64.b64encode(os.urandom(size)).decode()

    def create(i: int) -> None:
        stack.core.create_namespaced_secret(
            namespaces[i % len(namespaces)],
            k8s.V1Secret(
                metadata=k8s.V1ObjectMeta(name=f"sh.helm.release.v1.app{i}.v1"),
                type="helm.sh/release.v1",
                data={"release": blob},
            ),
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(count)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secrets", type=int, default=2000)
    parser.add_argument("--size-kib", type=int, default=256)
    parser.add_argument("--settle", type=float, default=30.0)
    args = parser.parse_args(argv)
    rows: list[tuple[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="vv-bench-secrets-") as tmp:
        workdir = Path(tmp)
        with ControlPlane(workdir / "cp") as plane, MotoS3(workdir / "moto") as s3:
            stack = Stack(plane, s3, workdir / "stack", nodes=("node-a",)).start()
            try:
                stack.add_account(namespace="bench")
                rows.append(("no unrelated Secrets", measure(stack, args.settle)))
                started = time.monotonic()
                fill(stack, args.secrets, args.size_kib * 1024)
                print(
                    f"created {args.secrets} Secrets of {args.size_kib} KiB "
                    f"in {time.monotonic() - started:.0f} s",
                    flush=True,
                )
                rows.append(
                    (f"{args.secrets} x {args.size_kib} KiB Secrets", measure(stack, args.settle))
                )
            finally:
                stack.stop()
    print()
    print("| cluster | peak RSS (MiB) | RSS after settle (MiB) | Secret GETs | watch bytes |")
    print("|---|---:|---:|---:|---:|")
    for name, row in rows:
        print(
            f"| {name} | {row['peak_mib']:.1f} | {row['rss_mib']:.1f} | "
            f"{row['secret_gets']:.0f} | {row['watch_bytes']:.0f} |"
        )
    base, loaded = rows[0][1], rows[1][1]
    print()
    print(
        f"difference: peak {loaded['peak_mib'] - base['peak_mib']:+.1f} MiB, "
        f"settled {loaded['rss_mib'] - base['rss_mib']:+.1f} MiB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
