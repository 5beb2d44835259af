"""Operator benchmark: many small Recordings across simulated nodes, end to end.

    python bench/recordings.py --recordings 1000 --nodes 10 --peers [--out report.md]
    python bench/recordings.py --recordings 1000 --profile     # py-spy on the operator
    python bench/recordings.py --cluster --recordings 1000 --peers   # real node + stand-in

Brings up the local stack (real kube-apiserver + etcd, moto with the seed policy, the
operator process, the stand-in kubelet with N nodes, in a process of its own), creates
the recordings as fast as the API takes them, waits until all are Completed and Stored,
and prints a Markdown report:

- recordings/s, p50/p99 from creation to ``completionTime``, recordings per uploader
  pod, the operator's peak RSS;
- with ``--peers``, first the same files through a boto3 ``put_object`` loop (16
  threads) and ``rclone copy --transfers 16``, same server and seed-policy credentials,
  and voicevault's rate as a ratio to each;
- CPU seconds by role over the burst, from /proc (``bench/proc_cpu.py``: uploader
  processes through the kubelet's reaped-children time), in all and per recording, and
  what other processes on the machine took meanwhile; the load average before and after;
- API requests per recording by verb and resource, and watch events sent per recording
  by kind, from the apiserver's own /metrics;
- each uploader process's CPU from its start to its first connection to S3 (a probe on
  the pods' PYTHONPATH, ``bench/uploader_probe``) and an ``-X importtime`` breakdown of
  the modules it had loaded by then;
- with ``--profile``, the operator's costliest functions (py-spy) per recording.

With ``--cluster`` each count runs on the real one-node cluster (the chart installed with
helm, real uploader pods), then on the stand-in with one node, in the same run, and both
report the same tables where measurable there (the CPU of uploader pods and of the
operator comes from their cgroups; no start probe in the image).
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import threading

from kubernetes.client.exceptions import ApiException

from bench import apimetrics
from bench.apimetrics import WRITE_VERBS, scrape
from bench.kubelet_process import KubeletProcess
from bench.peers import PeerRun, boto3_put_loop, rclone_copy
from bench.proc_cpu import (
    OTHER,
    CpuMeter,
    all_stats,
    children_of,
    cpu_window,
    loadavg,
    own,
    this_process,
    with_children,
)
from bench.pyspy import Profile, Recorder, parse_raw
from bench.s3log import log_size, requests_since
from bench.startcost import PROBE_DIR, ImportCost, StartCost, import_cost, read_probes, summarize
from tests.bed.controlplane import ControlPlane
from tests.bed.s3_moto import MotoS3
from tests.bed.stack import ACCOUNT_SID, Stack
from voicevault import API_GROUP, API_VERSION


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


STAND_IN_FLAGS = [
    *("--poll-interval", "1", "--resync-interval", "600", "--log-level", "warning"),
    # A leader that misses its renew deadline exits (and the bed starts it again): on a
    # starved shared machine that happened mid-burst. A longer lease keeps one operator
    # process through the run; renewals still come every retry period (2 s), as shipped.
    *("--lease-duration", "60", "--renew-deadline", "45"),
    "--webhook-cert-check-interval=300",  # as shipped; the bed looks every second
]


def count_objects(s3: Any, bucket: str, prefix: str) -> int:
    pages = (
        s3.admin_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    )
    return sum(page.get("KeyCount", 0) for page in pages)


def run(
    recordings: int,
    nodes: int,
    workdir: Path,
    rate: float | None = None,
    *,
    peers: bool = False,
    profile: bool = False,
) -> dict[str, Any]:
    with ControlPlane(workdir / "cp") as plane, MotoS3(workdir / "moto") as s3:
        names = tuple(f"node-{i:02d}" for i in range(nodes))
        # the test bed resyncs every 3 s for fast tests; measure the shipped default, with
        # the chart's webhooks on (the mutating one gives each Recording its finalizer)
        stack = Stack(
            plane, s3, workdir / "stack", nodes=names, operator_args=STAND_IN_FLAGS, webhook=True
        )
        kubelet = KubeletProcess(
            plane.admin_kubeconfig, workdir / "stack" / "kubelet", names, PROBE_DIR
        )
        stack.kubelet = kubelet  # type: ignore[assignment]
        stack.start()
        recorder: Recorder | None = None
        try:
            account = stack.add_account(namespace="bench")
            payload = os.urandom(2048)
            files = [
                (
                    stack.put_media(names[i % nodes], "bench", f"r{i}.wav", payload),
                    f"{names[i % nodes]}/r{i}.wav",
                )
                for i in range(recordings)
            ]
            moto_cpu = own(s3._proc.pid)
            peer_runs = (
                _peers(s3, account.s3, files, kubelet.root / "nodes", moto_cpu) if peers else []
            )
            operator_pid = stack.operator.process.pid  # type: ignore[union-attr]
            starts = stack.operator.starts

            def operator_cpu() -> float:
                # the live process, plus any that exited: the bed reaps an operator that
                # lost its Lease, so its CPU is in this process's reaped-children time
                times = os.times()
                current = stack.operator.process.pid  # type: ignore[union-attr]
                return with_children(current)() + times.children_user + times.children_system

            roles = {
                "kube-apiserver": own(plane.apiserver_pid),
                "etcd": own(plane.etcd_pid),
                "S3 server (moto)": moto_cpu,
                "operator": operator_cpu,
                "kubelet stand-in": own(kubelet.pid),
                "uploader processes (all pods)": children_of(kubelet.pid),
                "benchmark (creates, polls, the operator's API relay)": this_process,
            }
            if profile:
                recorder = Recorder(operator_pid, workdir / "operator.pyspy.txt").start()
                roles["py-spy (profiling the operator)"] = own(recorder.pid)
            meter = CpuMeter(roles)
            rss_start = peak_rss_mib(operator_pid)
            moto_log = s3.workdir / "moto.log"
            s3_offset = log_size(moto_log)

            def create(i: int) -> None:
                stack.create("bench", "recordings", _recording(i, names[i % nodes]))

            burst = _burst(
                recordings,
                create,
                meter,
                stack.operator.metrics,
                plane.metrics,
                lambda: _count_completed(stack),
                rate,
            )
            if recorder is not None:
                recorder.stop()
            rss_peak = peak_rss_mib(stack.operator.process.pid)  # type: ignore[union-attr]
            done = _wait_completed(stack, recordings, burst["started"])  # and all Stored
            result = _figures(recordings, nodes, done, burst)
            result["s3_requests"] = requests_since(moto_log, s3_offset)
            pods_probed = read_probes(kubelet.pods_dir, s3.port)
            result |= {
                "rss_start_mib": rss_start,
                "rss_peak_mib": rss_peak,
                "peers": peer_runs,
                "operator_restarts": stack.operator.starts - starts,
                "start": summarize(pods_probed),
                "probe_modules": next((p.modules for p in pods_probed if p.modules), ()),
            }
        finally:
            if recorder is not None:
                recorder.stop()
            stack.stop()
    if recorder is not None and recorder.out.exists():
        result["profile"] = parse_raw(recorder.out.read_text(), recorder.rate)
    return result


def _peers(
    s3: Any, account: Any, files: list[tuple[Path, str]], source: Path, server_cpu: Any
) -> list[PeerRun]:
    """The boto3 loop and rclone on the same files, each checked for every object stored."""
    print("peers: the same files, server and credentials, before voicevault", flush=True)
    runs = [
        boto3_put_loop(account, files, server_cpu),
        rclone_copy(account, source, len(files), server_cpu),
    ]
    for peer, folder in zip(runs, ("boto3", "rclone"), strict=True):
        stored = count_objects(s3, account.bucket, account.key(f"peers/{folder}/"))
        if stored != len(files):
            raise SystemExit(f"{peer.name} stored {stored} of {len(files)} objects")
        print(f"  {peer.name}: {peer.per_second:.1f} objects/s", flush=True)
    return runs


def _burst(
    recordings: int,
    create: Any,
    meter: CpuMeter,
    operator_metrics: Any,
    apiserver_metrics: Any,
    count_completed: Any,
    rate: float | None = None,
) -> dict[str, Any]:
    """Create the recordings, wait until the operator has seen them all Completed and its
    Events are out; CPU by role, apiserver counters and load over that window."""
    load_before = loadavg()
    metrics_before = apiserver_metrics()
    cpu_before = meter.snapshot()
    started = time.monotonic()
    started_wall = datetime.now(UTC)
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
    _wait_gauge(operator_metrics, recordings, started, count_completed)
    total = time.monotonic() - started
    # Events are posted behind the work; count them once the last one is out
    drain_by = time.monotonic() + 120
    while metric(operator_metrics(), "voicevault_events_pending") > 0:
        if time.monotonic() > drain_by:
            print("Events still pending after 120 s; counting what was posted")
            break
        time.sleep(2)
    cpu_after = meter.snapshot()
    window = time.monotonic() - started
    load_after = loadavg()
    metrics_after = apiserver_metrics()
    return {
        "started": started,
        "started_wall": started_wall,
        "created_s": created_in,
        "total_s": total,
        "window_s": window,
        "cpu": cpu_window(cpu_before, cpu_after),
        "load_before": load_before,
        "load_after": load_after,
        "requests": apimetrics.diff(
            apimetrics.requests(metrics_after), apimetrics.requests(metrics_before)
        ),
        "watch": apimetrics.diff(
            apimetrics.watch_events(metrics_after), apimetrics.watch_events(metrics_before)
        ),
        "conflicts": sum(
            n
            for (verb, resource, _, code), n in apimetrics.diff(
                apimetrics.requests_by_code(metrics_after),
                apimetrics.requests_by_code(metrics_before),
            ).items()
            if resource == "recordings" and code == "409"
        ),
        "operator_metrics": operator_metrics(),
    }


def _figures(
    recordings: int, nodes: int, done: list[dict[str, Any]], burst: dict[str, Any]
) -> dict[str, Any]:
    """The figures both runs (stand-in and real node) report alike."""
    latencies = _latencies(done)
    requests: apimetrics.Requests = burst["requests"]

    def count(resources: tuple[str, ...], verbs: tuple[str, ...] | None = None) -> float:
        return sum(
            v
            for (verb, res, _), v in requests.items()
            if res in resources and (verbs is None or verb in verbs)
        )

    recording_writes = count(("recordings",), WRITE_VERBS) - recordings  # not the creates
    pods = metric(burst["operator_metrics"], "voicevault_uploader_pods_created_total")
    # to the last completionTime: the gauge is polled only every few seconds
    last = max(_stamp(i["status"]["completionTime"]) for i in done)
    total = max((last - burst["started_wall"]).total_seconds(), burst["created_s"])
    return burst | {
        "recordings": recordings,
        "nodes": nodes,
        "total_s": total,
        "p50_s": statistics.median(latencies),
        "p99_s": latencies[int(0.99 * (len(latencies) - 1))],
        "max_s": latencies[-1],
        "throughput": recordings / total,
        "recording_writes_per": recording_writes / recordings,
        "event_writes_per": count(("events",), ("POST", "PATCH")) / recordings,
        "pod_and_secret_writes_per": count(("pods", "secrets"), WRITE_VERBS) / recordings,
        "reads_per": sum(v for (verb, _, _), v in requests.items() if verb not in WRITE_VERBS)
        / recordings,
        "pods": pods,
        "per_pod": recordings / pods if pods else 0.0,
    }


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


def _cgroup_cpu_s(path: Path | None) -> float:
    return _read_int(path / "cpuacct.usage") / 1e9 if path is not None else 0.0


def _shims_cpu_s() -> float:
    """containerd's shims re-parent themselves away from containerd: the live ones' CPU."""
    return sum(s.own_s for s in all_stats().values() if s.comm.startswith("containerd-shim"))


def run_cluster(recordings: int, workdir: Path, *, peers: bool = False) -> dict[str, Any]:
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
            files = [
                (stack.put_media(NODE_NAME, "bench", f"r{i}.wav", payload), f"r{i}.wav")
                for i in range(recordings)
            ]
            moto_cpu = own(s3._proc.pid)
            peer_runs = _peers(s3, account.s3, files, stack.host_path, moto_cpu) if peers else []
            operator_cg, _ = _pod_cgroups(stack.operator_pod().metadata.uid)
            kubepods = CGROUP / "cpuacct" / "kubepods"

            def operator_cpu() -> float:
                return _cgroup_cpu_s(operator_cg)

            def uploader_cpu() -> float:  # a cgroup's usage keeps its removed children's
                return _cgroup_cpu_s(kubepods) - operator_cpu()

            meter = CpuMeter(
                {
                    "kube-apiserver": own(node.process("kube-apiserver").pid),
                    "etcd": own(node.process("etcd").pid),
                    "S3 server (moto)": moto_cpu,
                    "operator (its pod's cgroup)": operator_cpu,
                    "kubelet": own(node.process("kubelet").pid),
                    "containerd": own(node.process("containerd").pid),
                    "containerd shims (live ones only)": _shims_cpu_s,
                    "controller-manager, scheduler, kube-proxy": lambda: sum(
                        own(node.process(n).pid)()
                        for n in ("kube-controller-manager", "kube-scheduler", "kube-proxy")
                    ),
                    "uploader pods (kubepods cgroup but the operator's)": uploader_cpu,
                    "benchmark (creates, polls)": this_process,
                }
            )
            sampler = PodSampler(stack.core, UPLOADER_NAMESPACE)
            sampler.start()
            context = node._ssl_context()

            def create(i: int) -> None:
                stack.create("bench", "recordings", _recording(i, NODE_NAME))

            burst = _burst(
                recordings,
                create,
                meter,
                stack.operator_metrics,
                lambda: scrape(node.server, context),
                lambda: _count_completed(stack),
            )
            rss, hwm = _operator_rss_mib(stack)
            sampler.stop_event.set()
            sampler.join()
            done = _wait_completed(stack, recordings, burst["started"])
            pods = list(sampler.pods.values())
            to_running = sorted(
                (p["started"] - p["created"]).total_seconds() for p in pods if "started" in p
            )
            result = _figures(recordings, 1, done, burst)
            return result | {
                "where": "real node",
                "to_running_p50_s": statistics.median(to_running) if to_running else 0.0,
                "to_running_max_s": to_running[-1] if to_running else 0.0,
                "pod_cpu_s": sum(p["cpu_ns"] for p in pods) / 1e9 / max(len(pods), 1),
                "pod_peak_mib": max((p["mem"] for p in pods), default=0) / 2**20,
                "operator_rss_mib": rss,
                "operator_hwm_mib": hwm,
                "rss_peak_mib": hwm,
                "account": account.namespace,
                "peers": peer_runs,
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
        done = [i for i in items if _done(i)]
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


def _wait_gauge(metrics: Any, recordings: int, started: float, count: Any) -> None:
    """Until the operator's phase gauge says every recording is Completed: cheaper for the
    apiserver than listing thousands of recordings every few seconds, which would count
    as load. The gauge is what the operator last saw and has lagged behind (4,575 of 5,000
    with all Completed), so when it stands still for 2 minutes ``count()`` lists them."""
    last_print = 0.0
    last_value, still_since = -1.0, time.monotonic()
    while True:
        completed = 0.0
        try:
            text = metrics()
            found = re.search(r'^voicevault_recordings\{phase="Completed"\} (\S+)$', text, re.M)
            completed = float(found.group(1)) if found else 0.0
        except OSError:
            pass
        if completed >= recordings:
            return
        now = time.monotonic()
        if completed != last_value:
            last_value, still_since = completed, now
        elif now - still_since > 120:
            listed = count()
            print(f"  gauge at {completed:.0f} for 2 min; listed: {listed} Completed", flush=True)
            if listed >= recordings:
                return
            still_since = now
        elapsed = now - started
        if elapsed - last_print >= 10:
            last_print = elapsed
            print(f"  {elapsed:6.1f}s Completed (operator's gauge): {completed:.0f}", flush=True)
        if elapsed > 3600:
            raise SystemExit("not done after an hour")
        # every scrape costs the operator a few ms (sys.getallocatedblocks holds the GIL)
        time.sleep(5)


def _count_completed(stack: Any) -> int:
    """Completed and Stored, listed 500 at a time (a list of thousands in one response
    timed out on the loaded apiserver); a failed list counts as not yet."""
    done, token = 0, None
    try:
        while True:
            page = stack.custom.list_namespaced_custom_object(
                API_GROUP, API_VERSION, "bench", "recordings", limit=500, _continue=token
            )
            done += sum(1 for i in page["items"] if _done(i))
            token = page["metadata"].get("continue")
            if not token:
                return done
    except ApiException as exc:
        print(f"  listing the recordings failed ({exc.status}); waiting on", flush=True)
        return 0


def _done(item: dict[str, Any]) -> bool:
    status = item.get("status") or {}
    return status.get("phase") == "Completed" and any(
        c["type"] == "Stored" for c in status.get("conditions", [])
    )


def _stamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _latencies(done: list[dict[str, Any]]) -> list[float]:
    return sorted(
        (
            _stamp(i["status"]["completionTime"]) - _stamp(i["metadata"]["creationTimestamp"])
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


def _per_recording_table(
    caption: str, columns: tuple[str, str], counts: dict[str, float], n: int
) -> list[str]:
    """Counts by key, most frequent first, with their share per recording; none: nothing."""
    if not counts:
        return []
    lines = [caption, "", f"| {columns[0]} | {columns[1]} | per recording |", "|---|---:|---:|"]
    lines += [
        f"| {key} | {count:.0f} | {count / n:.2f} |"
        for key, count in sorted(counts.items(), key=lambda kv: -kv[1])
    ]
    return [*lines, ""]


def report(r: dict[str, Any], title: str) -> str:
    """Every figure of one run, as Markdown that reads without this script at hand."""
    n = r["recordings"]
    lines = [
        f"### {title}: {n} recordings of 2 KiB on {r['nodes']} node(s)",
        "",
        f"Load average (1 min) {r['load_before']:.2f} before the burst, {r['load_after']:.2f} after;"
        f" {os.cpu_count()} cores. {r['created_s']:.0f} s to create them, {r['total_s']:.0f} s until"
        f" all were Completed: **{r['throughput']:.1f} recordings/s**; p50 {r['p50_s']:.1f} s,"
        f" p99 {r['p99_s']:.1f} s (creation to `completionTime`).",
        f" {r['pods']:.0f} uploader pods, **{r['per_pod']:.1f} recordings per pod**. Operator RSS"
        + (f" {r['rss_start_mib']:.0f} MiB at the start," if r.get("rss_start_mib") else "")
        + f" **peak {r['rss_peak_mib']:.0f} MiB**.",
        "",
    ]
    if r.get("operator_restarts"):
        lines += [
            f"**The operator restarted {r['operator_restarts']} time(s) during the burst (it lost"
            " its leader Lease): the figures include the restarts, its peak RSS is the last"
            " process's.**",
            "",
        ]
    peers: list[PeerRun] = r.get("peers", [])
    if peers:
        lines += [
            "Peers: the same files, S3 server and seed-policy credentials, just before voicevault:",
            "",
            "| client | objects/s | client CPU ms / object | S3 server CPU ms / object | voicevault ÷ this |",
            "|---|---:|---:|---:|---:|",
        ]
        for peer in peers:
            lines.append(
                f"| {peer.name} | {peer.per_second:.1f} | {1000 * peer.client_cpu_s / peer.objects:.1f}"
                f" | {1000 * peer.server_cpu_s / peer.objects:.1f} | **{r['throughput'] / peer.per_second:.2f}** |"
            )
        lines.append("")
    cpu: dict[str, float] = r.get("cpu", {})
    if cpu:
        window = r["window_s"]
        roles = sum(v for k, v in cpu.items() if k != OTHER)
        lines += [
            f"CPU by role over the {window:.0f} s from the first create until the last Event was"
            " posted (/proc; `% of cores` = CPU-s ÷ (window x cores)):",
            "",
            "| role | CPU-s | ms per recording | % of cores |",
            "|---|---:|---:|---:|",
        ]
        for role, seconds in sorted(cpu.items(), key=lambda kv: (kv[0] == OTHER, -kv[1])):
            if role == OTHER:
                lines.append(
                    f"| voicevault's stack, in all | {roles:.1f} | **{1000 * roles / n:.0f}** | {100 * roles / window / (os.cpu_count() or 1):.0f} |"
                )
            lines.append(
                f"| {role} | {seconds:.1f} | {1000 * seconds / n:.1f} | {100 * seconds / window / (os.cpu_count() or 1):.0f} |"
            )
        lines.append("")
    requests = r["requests"]
    lines += [
        "API requests by verb and resource (the apiserver's `apiserver_request_total`, every"
        " client; `POST recordings` is the benchmark's creates):",
        "",
        "| verb | resource | requests | per recording |",
        "|---|---|---:|---:|",
    ]
    lines += [
        f"| {verb} | {res} | {count:.0f} | {per:.2f} |"
        for verb, res, count, per in apimetrics.request_rows(requests, n)
    ]
    not_creates = sum(requests.values()) - n
    lines += [
        f"| all | but the creates | {not_creates:.0f} | **{not_creates / n:.2f}** |",
        "",
        f"Of these, {r.get('conflicts', 0):.0f} Recording writes were refused with 409 (a"
        " write based on a version that had changed since).",
        "",
    ]
    lines += _per_recording_table(
        "S3 requests during the burst (moto's request log: method, operation, status):",
        ("request", "count"),
        r.get("s3_requests", {}),
        n,
    )
    lines += _per_recording_table(
        "Watch events sent, per recording (`apiserver_watch_events_total`, one per event per"
        " watch; Recordings are watched by the operator alone, Pods by the operator and the"
        " kubelet):",
        ("kind", "events"),
        r.get("watch", {}),
        n,
    )
    start: StartCost | None = r.get("start")
    if start is not None:
        lines += [
            f"Uploader start cost (probe in each of the {start.pods} uploader processes): CPU from"
            f" process start to its first connection to S3 (its first PUT) p50 **{start.first_s3_cpu_p50_s:.2f} s**,"
            f" max {start.first_s3_cpu_max_s:.2f} s; CPU in all per process p50 {start.exit_cpu_p50_s:.2f} s.",
        ]
        if start.fixed_cpu_s is not None and start.per_recording_cpu_ms is not None:
            lines.append(
                f" Fitted to batch size: {start.fixed_cpu_s:.2f} CPU-s fixed per pod +"
                f" {start.per_recording_cpu_ms:.1f} CPU-ms per recording."
            )
        lines.append("")
    imports: ImportCost | None = r.get("imports")
    if imports is not None:
        lines += [
            f"Imports of an uploader up to its first PUT (the modules it had loaded, imported in"
            f" its order in a fresh interpreter): {imports.imports_cpu_s:.2f} CPU-s, on top of"
            f" {imports.interpreter_cpu_s:.2f} CPU-s for a bare `python -c pass`. By package"
            " (`-X importtime`, wall ms spent in the package's own modules, median of 3"
            " runs):",
            "",
            "| package | ms |",
            "|---|---:|",
        ]
        lines += [f"| {pkg} | {ms:.0f} |" for pkg, ms in imports.by_package[:12]]
        lines += [
            f"| all | {imports.total_ms:.0f} |",
            "",
        ]
    prof: Profile | None = r.get("profile")
    operator_ms = 1000 * cpu.get("operator", 0.0) / n
    if prof is not None and prof.samples and operator_ms:

        def ms(count: int) -> str:
            return f"{operator_ms * count / prof.samples:.2f} | {100 * count / prof.samples:.0f}%"

        lines += [
            f"Operator profile: py-spy --gil, {prof.rate} samples/s of the thread holding the"
            f" GIL, {prof.samples} samples. A function's ms per recording is its share of the"
            f" samples times the operator's measured {operator_ms:.1f} CPU-ms per recording"
            " (on a busy machine a thread also holds the GIL while it waits for a core).",
            "",
            "| function (inclusive) | ms per recording | share |",
            "|---|---:|---:|",
        ]
        lines += [f"| `{name}` | {ms(c)} |" for name, c in prof.telling(30)]
        lines += ["", "| package (own time) | ms per recording | share |", "|---|---:|---:|"]
        lines += [f"| {name} | {ms(c)} |" for name, c in prof.by_package()[:12]]
        lines += ["", "| function (own time) | ms per recording | share |", "|---|---:|---:|"]
        lines += [f"| `{name}` | {ms(c)} |" for name, c in prof.own.most_common(20)]
        lines.append("")
    return "\n".join(lines)


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
        "--peers",
        action="store_true",
        help="first upload the same files with a boto3 put_object loop (16 threads) and"
        " `rclone copy --transfers 16`, and report voicevault's rate as a ratio to theirs",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile the operator with py-spy during the burst (py-spy's CPU is its own row)",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="also run each count on the real one-node cluster (root), stand-in with 1 node",
    )
    parser.add_argument("--out", type=Path, help="also write the report (Markdown) to this file")
    args = parser.parse_args()
    if args.cluster:
        return cluster_main(args.recordings, peers=args.peers, out=args.out)
    results = []
    reports = []
    for count in args.recordings:
        with tempfile.TemporaryDirectory(prefix="vv-bench-op-") as tmp:
            result = run(
                count, args.nodes, Path(tmp), args.rate, peers=args.peers, profile=args.profile
            )
        if result.get("probe_modules"):
            result["imports"] = import_cost(result["probe_modules"])
        results.append(result)
        reports.append(report(result, "stand-in kubelet"))
        print(reports[-1], flush=True)
    print()
    print(table(results))
    _write(args.out, reports, results)
    return 0


def _write(out: Path | None, reports: list[str], results: list[dict[str, Any]]) -> None:
    if out is None:
        return
    command = "python bench/recordings.py " + " ".join(sys.argv[1:])
    out.write_text(f"Command: `{command}`\n\n" + "\n".join(reports) + "\n" + table(results) + "\n")


def cluster_main(counts: list[int], *, peers: bool, out: Path | None) -> int:
    results: list[dict[str, Any]] = []
    reports: list[str] = []
    for count in counts:
        with tempfile.TemporaryDirectory(prefix="vv-bench-cluster-") as tmp:
            real = run_cluster(count, Path(tmp), peers=peers)
        reports.append(report(real, "real node (kubelet, containerd, the chart's image)"))
        print(reports[-1], flush=True)
        with tempfile.TemporaryDirectory(prefix="vv-bench-op-") as tmp:
            standin = run(count, 1, Path(tmp), peers=peers)
        standin["where"] = "stand-in kubelet"
        standin["operator_hwm_mib"] = standin["rss_peak_mib"]
        reports.append(report(standin, "stand-in kubelet, one node, same run"))
        print(reports[-1], flush=True)
        results += [real, standin]
    print()
    print(cluster_table(results))
    if out is not None:
        command = "python bench/recordings.py " + " ".join(sys.argv[1:])
        out.write_text(
            f"Command: `{command}`\n\n" + "\n".join(reports) + "\n" + cluster_table(results) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
