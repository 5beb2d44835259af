"""`make up` / `make demo` as a newcomer meets them: `python -m tests.bed` as a real process.

The commands `up` prints are run as printed, in a shell whose HOME (and so kubectl's
default discovery cache) is fresh. Every run must leave no temporary folder behind,
whether it ends by itself, by Ctrl-C or by SIGTERM.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.bed import __main__ as bed
from tests.bed import binaries
from tests.bed.stack import REPO
from voicevault import API_GROUP

pytestmark = [pytest.mark.kube, pytest.mark.s3, pytest.mark.slow]
UP_TIMEOUT = 240.0  # a cold apiserver, moto and the operator on a loaded 2-core machine


@dataclass
class Run:
    """A `python -m tests.bed` process and the lines it has printed so far."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    feed: queue.Queue[str | None] = field(default_factory=queue.Queue)

    def read_until(self, marker: str, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while not any(marker in line for line in self.lines):
            try:
                line = self.feed.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = ""
            if line is None or time.monotonic() > deadline:
                raise AssertionError(f"no {marker!r} in the output:\n" + "".join(self.lines))
            self.lines.append(line)
        return self.lines

    def rest(self, timeout: float) -> tuple[int, str]:
        returncode = self.process.wait(timeout=timeout)
        while (line := self.feed.get(timeout=10)) is not None:
            self.lines.append(line)
        return returncode, "".join(self.lines)


@pytest.fixture
def sandbox(tmp_path: Path) -> dict[str, str]:
    """A fresh HOME and TMPDIR; the binary cache stays the shared one (no rebuild)."""
    for name in ("home", "tmp"):
        (tmp_path / name).mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBECACHEDIR")}
    return env | {
        "HOME": str(tmp_path / "home"),
        "TMPDIR": str(tmp_path / "tmp"),
        binaries.CACHE_ENV: str(binaries.cache_dir()),
    }


@contextmanager
def bed_process(
    command: str, env: dict[str, str], *, as_background_job: bool = False
) -> Iterator[Run]:
    """`as_background_job`: start with SIGINT ignored, as `make up &` in a shell does."""

    def ignore_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    process = subprocess.Popen(
        [sys.executable, "-m", "tests.bed", command],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=ignore_sigint if as_background_job else None,  # noqa: PLW1509
    )
    run = Run(process)

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            run.feed.put(line)
        run.feed.put(None)

    threading.Thread(target=pump, daemon=True).start()
    try:
        yield run
    finally:
        if process.poll() is None:
            # SIGTERM first: the bed stops what it started (the operator runs in a session
            # of its own, which a SIGKILL of this group would leave running)
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


def leftovers(env: dict[str, str]) -> list[str]:
    return sorted(p.name for p in Path(env["TMPDIR"]).glob(f"{bed.WORKDIR_PREFIX}*"))


def test_up_prints_commands_that_work_the_first_time_and_ctrl_c_cleans_up(
    sandbox: dict[str, str], tmp_path: Path
) -> None:
    with bed_process("up", sandbox, as_background_job=True) as run:
        lines = run.read_until("Press Ctrl-C to stop.", UP_TIMEOUT)
        script = "".join(line[4:] for line in lines if line.startswith("    "))
        assert "kubectl get voicevault -A" in script and "examples/recording.yaml" in script
        shell = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            env=sandbox,
            capture_output=True,
            text=True,
            timeout=200,
            check=False,
        )
        assert shell.returncode == 0, f"{script}\n--- stdout\n{shell.stdout}\n{shell.stderr}"
        out = shell.stdout
        setting = rf"^{bed.NAMESPACE}\s+voicestoragesetting\.{API_GROUP}/default\s"
        assert re.search(setting, out, re.M), "kubectl get voicevault -A lists the setting"
        assert "condition met" in out, "the example Recording reached Completed"
        assert "/RE" in out and ".wav" in out, "the bucket listing shows the stored object"
        assert leftovers(sandbox), "the workdir exists while the stack runs"
        run.process.send_signal(signal.SIGINT)
        returncode, output = run.rest(timeout=120)
    assert returncode == 130, output
    assert leftovers(sandbox) == [], "Ctrl-C removes the temporary folder"


def test_sigterm_stops_up_and_cleans_up(sandbox: dict[str, str]) -> None:
    with bed_process("up", sandbox) as run:
        run.read_until("Press Ctrl-C to stop.", UP_TIMEOUT)
        run.process.send_signal(signal.SIGTERM)
        returncode, output = run.rest(timeout=120)
    assert returncode == 130, output
    assert leftovers(sandbox) == []


def test_make_demo_and_up_build_only_what_the_stack_runs() -> None:
    for target in ("demo", "up"):
        plan = subprocess.run(
            ["make", "-n", target], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
        builds = [line for line in plan.splitlines() if "tests.bed.binaries" in line]
        assert builds == [
            ".venv/bin/python -m tests.bed.binaries --only etcd kubectl helm kube-apiserver"
        ], plan


def test_demo_completes_without_minio_and_leaves_nothing_behind(
    sandbox: dict[str, str], tmp_path: Path
) -> None:
    # a binary cache holding only the stack's binaries: needing MinIO would mean a build
    cache = tmp_path / "cache"
    cache.mkdir()
    for key in (f"kube-apiserver-{binaries.KUBERNETES_VERSION}", binaries.kubectl().parent.name):
        (cache / key).symlink_to(binaries.cache_dir() / key)
    sandbox[binaries.CACHE_ENV] = str(cache)
    with bed_process("demo", sandbox) as run:
        returncode, output = run.rest(timeout=UP_TIMEOUT + 180)
    assert returncode == 0, output
    assert "identical to the recorded audio" in output
    assert leftovers(sandbox) == []
