"""CPU seconds by role, from /proc, for the benchmarks that run a whole stack on one machine.

A role is a callable that returns the CPU seconds (user + system) its processes have used
so far; the meter takes a snapshot before and after a window and reports the difference.
Short-lived processes are counted through their parent: once a parent has reaped a
child, the kernel adds the child's whole CPU time (and that of the child's own reaped
children) to the parent's ``cutime``/``cstime``. So "everything under a parent" is its
reaped-children time plus the times of the descendants still alive at the snapshot,
which is exact whatever their lifetime, with no sampling in between.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/<pid>/stat that the meter uses, times in seconds."""

    pid: int
    ppid: int
    comm: str
    own_s: float  # utime + stime
    reaped_s: float  # cutime + cstime: reaped children, recursively


def parse_stat(text: str) -> ProcStat:
    """Parse /proc/<pid>/stat; the command name may hold spaces and parentheses."""
    head, _, rest = text.rpartition(")")
    pid_text, _, comm = head.partition(" (")
    fields = rest.split()
    # fields[0] is the state (field 3 of proc(5)), so field N is fields[N - 3]
    utime, stime, cutime, cstime = (int(fields[i - 3]) for i in (14, 15, 16, 17))
    return ProcStat(
        pid=int(pid_text),
        ppid=int(fields[4 - 3]),
        comm=comm,
        own_s=(utime + stime) / CLK_TCK,
        reaped_s=(cutime + cstime) / CLK_TCK,
    )


def read_stat(pid: int) -> ProcStat | None:
    try:
        return parse_stat((PROC / str(pid) / "stat").read_text())
    except (OSError, ValueError, IndexError):
        return None  # gone (or a zombie's unreadable remains)


def all_stats() -> dict[int, ProcStat]:
    stats: dict[int, ProcStat] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            stat = read_stat(int(entry.name))
            if stat is not None:
                stats[stat.pid] = stat
    return stats


def descendants(pid: int, stats: Mapping[int, ProcStat]) -> list[ProcStat]:
    """Live descendants of ``pid`` (not itself), from one listing of /proc."""
    children: dict[int, list[ProcStat]] = {}
    for stat in stats.values():
        children.setdefault(stat.ppid, []).append(stat)
    found: list[ProcStat] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child.pid)
    return found


def own(pid: int) -> Callable[[], float]:
    """The process's own CPU (all its threads, ended ones included)."""

    def seconds() -> float:
        stat = read_stat(pid)
        return stat.own_s if stat else 0.0

    return seconds


def with_children(pid: int) -> Callable[[], float]:
    """The process, its reaped children and its live descendants."""

    def seconds() -> float:
        stat = read_stat(pid)
        return (stat.own_s if stat else 0.0) + children_of(pid)()

    return seconds


def children_of(pid: int) -> Callable[[], float]:
    """Everything ``pid`` started: reaped children plus live descendants, not itself."""

    def seconds() -> float:
        stat = read_stat(pid)
        if stat is None:
            return 0.0
        live = descendants(pid, all_stats())
        # a live descendant's own reaped children are in its reaped_s; a live grandchild
        # is listed too, and its time is not yet in its parent's reaped_s
        return stat.reaped_s + sum(d.own_s + d.reaped_s for d in live)

    return seconds


def this_process() -> float:
    times = os.times()
    return times.user + times.system


def machine_busy_s() -> float:
    """CPU seconds all cores spent not idle since boot (the first line of /proc/stat)."""
    fields = [int(v) for v in (PROC / "stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    # guest time is already inside user/nice
    return (sum(fields[:8]) - idle) / CLK_TCK


def loadavg() -> float:
    """The 1-minute load average."""
    return float((PROC / "loadavg").read_text().split()[0])


OTHER = "other processes on the machine"


class CpuMeter:
    """Snapshots of named roles; ``OTHER`` is the machine's busy time no role explains."""

    def __init__(self, roles: Mapping[str, Callable[[], float]]) -> None:
        self.roles = dict(roles)

    def snapshot(self) -> dict[str, float]:
        values = {name: read() for name, read in self.roles.items()}
        values[OTHER] = machine_busy_s()
        return values


def cpu_window(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """CPU seconds per role between two snapshots; ``OTHER`` net of the roles."""
    used = {name: max(after[name] - before.get(name, 0.0), 0.0) for name in after}
    if OTHER in used:
        roles = sum(v for k, v in used.items() if k != OTHER)
        used[OTHER] = max(used[OTHER] - roles, 0.0)
    return used
