"""Operator benchmark: many small Recordings across simulated nodes, end to end.

    python bench/recordings.py --recordings 1000 10000 --nodes 10 [--rate PER_SECOND]
    python bench/recordings.py --cluster --recordings 1000   # real node, stand-in beside it

Brings up the local stack (real kube-apiserver + etcd, moto with the seed policy, the
operator process, the stand-in kubelet with N nodes), creates the recordings as fast as
the API takes them, waits until all are Completed, and reports: time from creation to
Completed (p50/p99), Kubernetes API writes per recording (counted by the apiserver
itself, from its /metrics, all clients but the benchmark's own creates), uploader pods
created, and the operator's peak RSS.

With ``--cluster`` each count runs on the real one-node cluster too (the chart installed
with helm, real uploader pods), beside the stand-in with one node, in the same run. It
adds pod create to Running (from the pods' own timestamps), the uploader pods' CPU
seconds and peak memory (their cgroups, sampled while they exist) and the operator's RSS
in its pod.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import threading

from tests.bed.controlplane import ControlPlane
from tests.bed.s3_moto import MotoS3
from tests.bed.stack import ACCOUNT_SID, Stack
from tests.support.kube import apiserver_request_counts
from voicevault import API_GROUP, API_VERSION

WRITE_VERBS = ("POST", "PATCH", "PUT", "DELETE")


def apiserver_requests(plane: ControlPlane) -> dict[tuple[str, str, str], float]:
    """apiserver_request_total by (verb, resource, subresource), from the apiserver."""
    counts: dict[tuple[str, str, str], float] = {}
    for (verb, resource, sub, _code), value in apiserver_request_counts(plane).items():
        counts[(verb, resource, sub)] = counts.get((verb, resource, sub), 0.0) + value
    return counts


def diff(after: dict[Any, float], before: dict[Any, float]) -> dict[Any, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def run(recordings: int, nodes: int, workdir: Path, rate: float | None = None) -> dict[str, Any]:
    with ControlPlane(workdir / "cp") as plane, MotoS3(workdir / "moto") as s3:
        names = tuple(f"node-{i:02d}" for i in range(nodes))
        stack = Stack(
            plane,
            s3,
            workdir / "stack",
            nodes=names,
            # the test bed resyncs every 3 s for fast tests; measure the shipped default
            operator_args=[
                "--poll-interval",
                "1",
                "--resync-interval",
                "600",
                "--log-level",
                "warning",
            ],
        ).start()
        try:
            account = stack.add_account(namespace="bench")
            payload = os.urandom(2048)
            for i in range(recordings):
                stack.put_media(names[i % nodes], "bench", f"r{i}.wav", payload)
            rss_start = peak_rss_mib(stack.operator.process.pid)  # type: ignore[union-attr]
            before = apiserver_requests(plane)
            started = time.monotonic()

            def create(i: int) -> None:
                stack.create(
                    "bench",
                    "recordings",
                    {
                        "metadata": {"name": f"r{i}"},
                        "spec": {
                            "accountSid": ACCOUNT_SID,
                            "callSid": "CA" + f"{i:032x}",
                            "source": "RecordVerb",
                            "startTime": "2026-11-25T10:00:00Z",
                            "duration": 3,
                            "nodeName": names[i % nodes],
                            "mediaPath": f"r{i}.wav",
                        },
                    },
                )

            if rate is None:  # a burst: as fast as the API takes them
                with ThreadPoolExecutor(8) as pool:
                    list(pool.map(create, range(recordings)))
            else:  # paced: one every 1/rate seconds, on schedule
                for i in range(recordings):
                    delay = started + i / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    create(i)
            created_in = time.monotonic() - started
            print(f"created {recordings} recordings in {created_in:.1f}s", flush=True)
            done = _wait_completed(stack, recordings, started)
            total = time.monotonic() - started
            # Events are posted behind the work; count them once the last one is out
            drain_by = time.monotonic() + 120
            while metric(stack.operator.metrics(), "voicevault_events_pending") > 0:
                if time.monotonic() > drain_by:
                    print("Events still pending after 120 s; counting what was posted")
                    break
                time.sleep(1)
            after = apiserver_requests(plane)
            metrics = stack.operator.metrics()
            rss_peak = peak_rss_mib(stack.operator.process.pid)  # type: ignore[union-attr]
            latencies = sorted(
                (
                    datetime.fromisoformat(i["status"]["completionTime"].replace("Z", "+00:00"))
                    - datetime.fromisoformat(
                        i["metadata"]["creationTimestamp"].replace("Z", "+00:00")
                    )
                ).total_seconds()
                for i in done
            )
            requests = diff(after, before)
            recording_writes = (
                sum(
                    v
                    for (verb, res, _), v in requests.items()
                    if res == "recordings" and verb in WRITE_VERBS
                )
                - recordings
            )
            event_writes = sum(
                v for (verb, res, _), v in requests.items() if res == "events" and verb == "POST"
            )
            pod_writes = sum(
                v
                for (verb, res, _), v in requests.items()
                if res in ("pods", "secrets") and verb in WRITE_VERBS
            )
            reads = sum(v for (verb, _, _), v in requests.items() if verb not in WRITE_VERBS)
            return {
                "recordings": recordings,
                "created_s": created_in,
                "nodes": nodes,
                "total_s": total,
                "p50_s": statistics.median(latencies),
                "p99_s": latencies[int(0.99 * (len(latencies) - 1))],
                "max_s": latencies[-1],
                "throughput": recordings / total,
                "recording_writes_per": recording_writes / recordings,
                "event_writes_per": event_writes / recordings,
                "pod_and_secret_writes_per": pod_writes / recordings,
                "reads_per": reads / recordings,
                "pods": metric(metrics, "voicevault_uploader_pods_created_total"),
                "rss_start_mib": rss_start,
                "rss_peak_mib": rss_peak,
                "requests": requests,
                "account": account.namespace,
            }
        finally:
            stack.stop()


CGROUP = Path("/sys/fs/cgroup")


def _pod_cgroups(uid: str) -> tuple[Path | None, Path | None]:
    """The pod's cpuacct and memory cgroups (cgroupfs driver, any QoS class)."""
    found: list[Path | None] = []
    for controller in ("cpuacct", "memory"):
        hits = [d for d in (CGROUP / controller / "kubepods").glob(f"**/pod{uid}") if d.is_dir()]
        found.append(hits[0] if hits else None)
    return found[0], found[1]


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


class PodSampler(threading.Thread):
    """Samples uploader pods while they exist: start times, CPU and peak memory."""

    def __init__(self, core: Any, namespace: str) -> None:
        super().__init__(daemon=True)
        self.core = core
        self.namespace = namespace
        self.stop_event = threading.Event()
        self.pods: dict[str, dict[str, Any]] = {}

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                items = self.core.list_namespaced_pod(self.namespace).items
            except Exception:
                items = []
            for pod in items:
                rec = self.pods.setdefault(
                    pod.metadata.uid,
                    {"created": pod.metadata.creation_timestamp, "cpu_ns": 0, "mem": 0},
                )
                for cs in pod.status.container_statuses or []:
                    state = cs.state
                    started = (state.running and state.running.started_at) or (
                        state.terminated and state.terminated.started_at
                    )
                    if started:
                        rec["started"] = started
                cpu, mem = _pod_cgroups(pod.metadata.uid)
                if cpu is not None:
                    rec["cpu_ns"] = max(rec["cpu_ns"], _read_int(cpu / "cpuacct.usage"))
                if mem is not None:
                    rec["mem"] = max(rec["mem"], _read_int(mem / "memory.max_usage_in_bytes"))
            self.stop_event.wait(0.3)


def _operator_rss_mib(stack: Any) -> tuple[float, float]:
    """VmRSS and VmHWM of the operator's process, found through its pod's cgroup."""
    pod = stack.operator_pod()
    _, mem = _pod_cgroups(pod.metadata.uid)
    rss = hwm = 0.0
    for procs in mem.glob("*/cgroup.procs") if mem else []:
        for pid in procs.read_text().split():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = max(rss, int(line.split()[1]) / 1024)
                if line.startswith("VmHWM:"):
                    hwm = max(hwm, int(line.split()[1]) / 1024)
    return rss, hwm


def run_cluster(recordings: int, workdir: Path) -> dict[str, Any]:
    from tests.bed.cluster_stack import UPLOADER_NAMESPACE, ClusterStack
    from tests.bed.realnode import BRIDGE_IP, NODE_NAME, RealNode

    with RealNode() as node, MotoS3(workdir / "moto", host=BRIDGE_IP) as s3:
        stack = ClusterStack(node, s3, workdir / "cluster")
        stack.install(
            "operator.extraArgs={--poll-interval=1,--resync-interval=600,--log-level=warning}"
        )
        try:
            stack.wait_operator_ready()
            account = stack.add_account(namespace="bench")
            payload = os.urandom(2048)
            for i in range(recordings):
                stack.put_media(NODE_NAME, "bench", f"r{i}.wav", payload)
            sampler = PodSampler(stack.core, UPLOADER_NAMESPACE)
            sampler.start()
            started = time.monotonic()

            def create(i: int) -> None:
                stack.create("bench", "recordings", _recording(i, NODE_NAME))

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(create, range(recordings)))
            created_in = time.monotonic() - started
            done = _wait_completed(stack, recordings, started)
            total = time.monotonic() - started
            rss, hwm = _operator_rss_mib(stack)
            sampler.stop_event.set()
            sampler.join()
            pods = list(sampler.pods.values())
            to_running = sorted(
                (p["started"] - p["created"]).total_seconds() for p in pods if "started" in p
            )
            latencies = _latencies(done)
            return {
                "where": "real node",
                "recordings": recordings,
                "created_s": created_in,
                "total_s": total,
                "throughput": recordings / total,
                "p50_s": statistics.median(latencies),
                "p99_s": latencies[int(0.99 * (len(latencies) - 1))],
                "pods": len(pods),
                "to_running_p50_s": statistics.median(to_running) if to_running else 0.0,
                "to_running_max_s": to_running[-1] if to_running else 0.0,
                "pod_cpu_s": sum(p["cpu_ns"] for p in pods) / 1e9 / max(len(pods), 1),
                "pod_peak_mib": max((p["mem"] for p in pods), default=0) / 2**20,
                "operator_rss_mib": rss,
                "operator_hwm_mib": hwm,
                "account": account.namespace,
            }
        finally:
            stack.stop()


def _recording(i: int, node: str) -> dict[str, Any]:
    return {
        "metadata": {"name": f"r{i}"},
        "spec": {
            "accountSid": ACCOUNT_SID,
            "callSid": "CA" + f"{i:032x}",
            "source": "RecordVerb",
            "startTime": "2026-11-25T10:00:00Z",
            "duration": 3,
            "nodeName": node,
            "mediaPath": f"r{i}.wav",
        },
    }


def _wait_completed(stack: Any, recordings: int, started: float) -> list[dict[str, Any]]:
    while True:
        items = stack.custom.list_namespaced_custom_object(
            API_GROUP, API_VERSION, "bench", "recordings"
        )["items"]
        done = [
            i
            for i in items
            if (i.get("status") or {}).get("phase") == "Completed"
            and any(c["type"] == "Stored" for c in i["status"].get("conditions", []))
        ]
        phases: dict[str, int] = {}
        for i in items:
            p = (i.get("status") or {}).get("phase") or "new"
            phases[p] = phases.get(p, 0) + 1
        print(f"  {time.monotonic() - started:6.1f}s {phases}", flush=True)
        if len(done) == recordings:
            return done
        if time.monotonic() - started > 3600:
            raise SystemExit("not done after an hour")
        time.sleep(5)


def _latencies(done: list[dict[str, Any]]) -> list[float]:
    return sorted(
        (
            datetime.fromisoformat(i["status"]["completionTime"].replace("Z", "+00:00"))
            - datetime.fromisoformat(i["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
        ).total_seconds()
        for i in done
    )


CLUSTER_COLUMNS = [
    ("run", "where", "{}"),
    ("recordings", "recordings", "{:d}"),
    ("all Completed (s)", "total_s", "{:.0f}"),
    ("rec./s", "throughput", "{:.1f}"),
    ("p50 (s)", "p50_s", "{:.1f}"),
    ("p99 (s)", "p99_s", "{:.1f}"),
    ("uploader pods", "pods", "{:.0f}"),
    ("pod create→Running p50 (s)", "to_running_p50_s", "{:.2f}"),
    ("… max (s)", "to_running_max_s", "{:.2f}"),
    ("CPU-s / pod", "pod_cpu_s", "{:.2f}"),
    ("pod peak memory (MiB)", "pod_peak_mib", "{:.0f}"),
    ("operator RSS (MiB)", "operator_rss_mib", "{:.0f}"),
    ("operator RSS peak (MiB)", "operator_hwm_mib", "{:.0f}"),
]


def cluster_table(results: list[dict[str, Any]]) -> str:
    rows = ["| " + " | ".join(title for title, _, _ in CLUSTER_COLUMNS) + " |"]
    rows.append("|" + "---:|" * len(CLUSTER_COLUMNS))
    for r in results:
        cells = []
        for _, key, fmt in CLUSTER_COLUMNS:
            cells.append(fmt.format(r[key]) if key in r else "-")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


COLUMNS = [
    ("recordings", "recordings", "{:d}"),
    ("nodes", "nodes", "{:d}"),
    ("created in (s)", "created_s", "{:.0f}"),
    ("all Completed (s)", "total_s", "{:.0f}"),
    ("rec./s", "throughput", "{:.1f}"),
    ("p50 (s)", "p50_s", "{:.0f}"),
    ("p99 (s)", "p99_s", "{:.0f}"),
    ("Recording writes / rec.", "recording_writes_per", "{:.2f}"),
    ("Event writes / rec.", "event_writes_per", "{:.2f}"),
    ("pod+Secret writes / rec.", "pod_and_secret_writes_per", "{:.3f}"),
    ("reads / rec.", "reads_per", "{:.2f}"),
    ("uploader pods", "pods", "{:.0f}"),
    ("operator RSS start (MiB)", "rss_start_mib", "{:.0f}"),
    ("operator RSS peak (MiB)", "rss_peak_mib", "{:.0f}"),
]


def table(results: list[dict[str, Any]]) -> str:
    """A Markdown table, one row per run."""
    rows = ["| " + " | ".join(title for title, _, _ in COLUMNS) + " |"]
    rows.append("|" + "---:|" * len(COLUMNS))
    for r in results:
        rows.append("| " + " | ".join(fmt.format(r[key]) for _, key, fmt in COLUMNS) + " |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recordings", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="create this many recordings per second (default: as fast as the API takes them)",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="also run each count on the real one-node cluster (root), stand-in with 1 node",
    )
    args = parser.parse_args()
    if args.cluster:
        return cluster_main(args.recordings)
    results = []
    for count in args.recordings:
        with tempfile.TemporaryDirectory(prefix="vv-bench-op-") as tmp:
            result = run(count, args.nodes, Path(tmp), args.rate)
            results.append(result)
            print(table([result]), flush=True)
            top = sorted(result["requests"].items(), key=lambda kv: -kv[1])[:12]
            print(
                "  apiserver requests during the run:",
                ", ".join(f"{v:.0f} {k[0]} {k[1]}{'/' + k[2] if k[2] else ''}" for k, v in top),
            )
    print()
    print(table(results))
    return 0


def cluster_main(counts: list[int]) -> int:
    results: list[dict[str, Any]] = []
    for count in counts:
        with tempfile.TemporaryDirectory(prefix="vv-bench-cluster-") as tmp:
            real = run_cluster(count, Path(tmp))
            print(cluster_table([real]), flush=True)
        with tempfile.TemporaryDirectory(prefix="vv-bench-op-") as tmp:
            standin = run(count, 1, Path(tmp))
            standin["where"] = "stand-in kubelet"
            standin["operator_hwm_mib"] = standin["rss_peak_mib"]
        results += [real, standin]
    print()
    print(cluster_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
