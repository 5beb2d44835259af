"""The operator benchmark's meters: /proc parsing, reaped-children CPU, apiserver counters,
py-spy stacks and the start-cost fit (bench/)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import apimetrics
from bench.proc_cpu import CLK_TCK, OTHER, children_of, cpu_window, parse_stat, read_stat
from bench.pyspy import frame_name, parse_raw
from bench.s3log import log_size, requests_since
from bench.startcost import line_fit


def test_parse_stat_reads_times_past_a_command_name_with_spaces_and_parentheses() -> None:
    fields = ["S", "7"] + ["0"] * 9 + ["300", "100", "50", "25"] + ["0"] * 30
    stat = parse_stat(f"42 (we (ird) name) {' '.join(fields)}")
    assert (stat.pid, stat.ppid, stat.comm) == (42, 7, "we (ird) name")
    assert stat.own_s == 400 / CLK_TCK
    assert stat.reaped_s == 75 / CLK_TCK


def test_a_reaped_child_is_counted_in_its_parents_children_time() -> None:
    before = children_of(os.getpid())()
    burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    subprocess.run([sys.executable, "-c", burn], check=True)
    assert children_of(os.getpid())() - before >= 0.25
    stat = read_stat(os.getpid())
    assert stat is not None and stat.reaped_s >= 0.25


def test_cpu_window_takes_the_roles_out_of_the_machines_busy_time() -> None:
    used = cpu_window({"a": 1.0, OTHER: 10.0}, {"a": 3.0, OTHER: 15.0})
    assert used == {"a": 2.0, OTHER: 3.0}


def test_apiserver_counters_sum_over_codes_and_diff() -> None:
    text = "\n".join(
        [
            'apiserver_request_total{code="200",resource="recordings",'
            'subresource="status",verb="PATCH"} 3',
            'apiserver_request_total{code="409",resource="recordings",'
            'subresource="status",verb="PATCH"} 1',
            'apiserver_watch_events_total{group="voicevault.io",kind="Recording",version="v1"} 9',
        ]
    )
    assert apimetrics.requests(text) == {("PATCH", "recordings", "status"): 4.0}
    assert apimetrics.watch_events(text) == {"Recording": 9.0}
    assert apimetrics.diff({"a": 5.0, "b": 1.0}, {"a": 2.0, "b": 1.0}) == {"a": 3.0}


def test_pyspy_stacks_count_own_and_inclusive_time_once_per_sample() -> None:
    root = "run (/x/.venv/lib/python3.11/site-packages/kopf/_core/reactor/running.py:10)"
    call = "_call (/repo/operator/kube.py:40)"
    text = f"{root};{call};{call} 3\n{root} 2\n"
    profile = parse_raw(text, rate=50)
    assert profile.samples == 5
    assert profile.inclusive["operator/kube.py:_call"] == 3  # recursion counted once
    assert profile.own["kopf/_core/reactor/running.py:run"] == 2
    assert frame_name("run (/usr/lib/python3.11/threading.py:975)") == "threading.py:run"


def test_line_fit_finds_fixed_cost_and_slope() -> None:
    assert line_fit([10, 20, 30], [1.1, 1.2, 1.3]) == pytest.approx((1.0, 0.01))
    assert line_fit([5, 5], [1.0, 2.0]) is None


def test_moto_log_lines_after_the_offset_count_by_method_operation_and_code(
    tmp_path: Path,
) -> None:
    log = tmp_path / "moto.log"
    before = '127.0.0.1 - - [01/Dec/2026 23:36:15] "PUT /b/calls/old.wav HTTP/1.1" 200 -\n'
    log.write_text(before)
    offset = log_size(log)
    with log.open("a") as out:
        out.write('127.0.0.1 - - [x] "PUT /b/calls/r1.wav?x-id=PutObject HTTP/1.1" 200 -\n')
        out.write('127.0.0.1 - - [x] "PUT /b/calls/r2.wav?x-id=PutObject HTTP/1.1" 403 -\n')
        out.write('127.0.0.1 - - [x] "GET /b?uploads&prefix=calls%2F HTTP/1.1" 200 -\n')
    assert requests_since(log, offset) == {
        "PUT PutObject 200": 1,
        "PUT PutObject 403": 1,
        "GET uploads 200": 1,
    }
