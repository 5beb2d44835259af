"""The stand-in kubelet in a process of its own, so /proc can tell its CPU from the rest.

In-process (as ``Stack`` runs it) its threads and the uploader processes it reaps would be
counted with the benchmark's own. Here the uploader processes are its children: their CPU
is its reaped-children time plus that of the ones still running (``bench.proc_cpu``).
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.bed.kubelet import run_in_subprocess


class KubeletProcess:
    """Stands in for ``Stack.kubelet``: ``start``, ``stop`` and ``node_dir``."""

    def __init__(
        self, kubeconfig: Path, root: Path, nodes: Sequence[str], pythonpath: Path | None = None
    ) -> None:
        self.kubeconfig = kubeconfig
        self.root = root
        self.nodes = list(nodes)
        self.pythonpath = pythonpath  # put first on the pods' PYTHONPATH (the start probe)
        self.process: subprocess.Popen[bytes] | None = None

    def node_dir(self, node: str) -> Path:
        return self.root / "nodes" / node

    @property
    def pods_dir(self) -> Path:
        return self.root / "pods"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> KubeletProcess:
        saved = os.environ.get("PYTHONPATH")
        if self.pythonpath is not None:  # the harness passes PYTHONPATH on to its pods
            os.environ["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(self.pythonpath), saved) if p
            )
        try:
            self.process = run_in_subprocess(self.kubeconfig, self.root, self.nodes)
        finally:
            if saved is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = saved
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # it kills its pods' processes and exits
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
