"""What an uploader process costs before its first S3 request, and what it costs in all.

Two sources:
- the probe (``bench/uploader_probe/sitecustomize.py``) in every uploader process of
  the stand-in kubelet: CPU seconds at its first connection to the S3 server (its first
  PUT goes out on it) and at exit, and the modules loaded by then;
- ``python -X importtime`` importing those same modules, in the order the process
  loaded them, in a fresh interpreter: which packages the start-up time goes to.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PROBE_DIR = Path(__file__).resolve().parent / "uploader_probe"
PROBE_FILE = "start-probe.json"


@dataclass(frozen=True)
class PodProbe:
    pod: str
    items: int | None  # recordings in its batch file, when it has one
    first_s3_cpu_s: float | None  # None: it never connected to S3
    exit_cpu_s: float
    modules: tuple[str, ...]


def read_probes(pods_dir: Path, s3_port: int) -> list[PodProbe]:
    """One record per uploader process that ran under the stand-in kubelet."""
    probes: list[PodProbe] = []
    for path in sorted(pods_dir.glob(f"*/{PROBE_FILE}")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        first = next((c for c in record["connects"] if c["port"] == s3_port), None)
        probes.append(
            PodProbe(
                pod=path.parent.name,
                items=_batch_items(path.parent),
                first_s3_cpu_s=first["cpu_s"] if first else None,
                exit_cpu_s=float(record["exit_cpu_s"]),
                modules=tuple(first["modules"]) if first else (),
            )
        )
    return probes


def _batch_items(pod_dir: Path) -> int | None:
    for batch in pod_dir.glob("volumes/*/batch.json"):
        try:
            return len(json.loads(batch.read_text())["items"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return None


def line_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float] | None:
    """Least squares ``y = a + b x``: (a, b); None without two distinct x."""
    if len(xs) < 2 or len(set(xs)) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )
    return my - b * mx, b


@dataclass(frozen=True)
class StartCost:
    pods: int
    first_s3_cpu_p50_s: float
    first_s3_cpu_max_s: float
    exit_cpu_p50_s: float
    fixed_cpu_s: float | None  # intercept of exit CPU against batch size
    per_recording_cpu_ms: float | None  # its slope


def summarize(probes: Sequence[PodProbe]) -> StartCost | None:
    started = [p for p in probes if p.first_s3_cpu_s is not None]
    if not started:
        return None
    firsts = sorted(p.first_s3_cpu_s for p in started if p.first_s3_cpu_s is not None)
    sized = [p for p in probes if p.items]
    fit = line_fit([float(p.items or 0) for p in sized], [p.exit_cpu_s for p in sized])
    return StartCost(
        pods=len(started),
        first_s3_cpu_p50_s=statistics.median(firsts),
        first_s3_cpu_max_s=firsts[-1],
        exit_cpu_p50_s=statistics.median(p.exit_cpu_s for p in probes),
        fixed_cpu_s=fit[0] if fit else None,
        per_recording_cpu_ms=fit[1] * 1000 if fit else None,
    )


_IMPORTTIME = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)$")

_IMPORT_ALL = """
import importlib, sys, time
names = sys.argv[1:]
print("--- imports start", file=sys.stderr, flush=True)
start = time.process_time()
for name in names:
    if name not in sys.modules:
        try:
            importlib.import_module(name)
        except Exception:
            pass
print(time.process_time() - start)
"""


@dataclass(frozen=True)
class ImportCost:
    interpreter_cpu_s: float  # a bare `python -c pass`, for scale
    imports_cpu_s: float  # importing the modules, without -X importtime (median of 3)
    by_package: list[tuple[str, float]]  # (package, ms in its own modules), heaviest first
    total_ms: float  # all of -X importtime's self times: the whole import


def import_cost(modules: Sequence[str], python: str = sys.executable, runs: int = 3) -> ImportCost:
    """Import ``modules`` in order in fresh interpreters: CPU, and importtime's breakdown
    (each package's median over ``runs``; importtime measures wall time)."""
    names = [m for m in modules if not m.startswith("__")]
    bare = _child_cpu([python, "-c", "pass"])
    cpu: list[float] = []
    per_package: dict[str, list[float]] = {}
    totals: list[float] = []
    for _ in range(runs):
        plain = subprocess.run(
            [python, "-c", _IMPORT_ALL, *names], capture_output=True, text=True, check=True
        )
        cpu.append(float(plain.stdout.strip().splitlines()[-1]))
        timed = subprocess.run(
            [python, "-X", "importtime", "-c", _IMPORT_ALL, *names],
            capture_output=True,
            text=True,
            check=True,
        )
        own = _own_ms_by_package(timed.stderr)
        totals.append(sum(own.values()))
        for package, ms in own.items():
            per_package.setdefault(package, []).append(ms)
    by_package = {k: statistics.median(v + [0.0] * (runs - len(v))) for k, v in per_package.items()}
    return ImportCost(
        interpreter_cpu_s=bare,
        imports_cpu_s=statistics.median(cpu),
        by_package=sorted(by_package.items(), key=lambda kv: -kv[1]),
        total_ms=statistics.median(totals),
    )


def _own_ms_by_package(stderr: str) -> dict[str, float]:
    """Self time of every module imported after the marker, summed by top-level package."""
    lines = stderr.splitlines()
    mark = lines.index("--- imports start") if "--- imports start" in lines else 0
    own: dict[str, float] = {}
    for line in lines[mark:]:
        match = _IMPORTTIME.match(line)
        if match:
            package = match.group(4).split(".")[0]
            own[package] = own.get(package, 0.0) + int(match.group(1)) / 1000
    return own


def _child_cpu(argv: Sequence[str]) -> float:
    """CPU seconds of one run of ``argv`` (median of 3)."""
    import resource

    runs = []
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(argv, check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        runs.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(runs)
