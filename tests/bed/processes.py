"""Background server processes that cannot outlive the test session.

Every server runs in its own process group (so helpers it spawns die with it), logs to a
file, and is registered for an ``atexit`` sweep in case a fixture's teardown never runs.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

_LIVE: set[ManagedProcess] = set()


class ServerStartError(RuntimeError):
    """A server exited or was not ready in time; the message carries its log tail."""


# Servers of the bed listen on ports from here, below the kernel's ephemeral range (and
# below the NodePort range): a port taken from that range (bind to 0) is free only until
# some client's outgoing connection is given it as its local port, and a server restarted
# on its old port (an operator after a kill) then failed with "address already in use".
PORT_POOL = range(20000, 30000)
_handed: set[int] = set()
_handing = threading.Lock()


def _worker_slice(pool: range) -> range:
    """This pytest-xdist worker's share of `pool`, so two workers never pick alike."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    size = len(pool) // max(count, 1)
    start = pool.start + (index % max(count, 1)) * size
    return range(start, start + size)


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """An unused port on ``host`` that no outgoing connection can be given meanwhile: from
    `PORT_POOL` (this worker's share of it, never the same twice in one process), checked
    by binding it. Falls back to the kernel's choice when the pool overlaps its range."""
    if _ephemeral_start() < PORT_POOL.stop:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
            return port
    share = _worker_slice(PORT_POOL)
    offset = random.randrange(len(share))  # spreads processes over the share; not a secret
    with _handing:
        for i in range(len(share)):
            candidate = share[(offset + i) % len(share)]
            if candidate in _handed:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((host, candidate))
                except OSError:
                    continue
            _handed.add(candidate)
            return candidate
    raise RuntimeError(f"no free port left in {share}")


def wait_until(
    ready: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    process: ManagedProcess | None = None,
    interval: float = 0.1,
) -> None:
    """Poll ``ready`` until true; fail fast if ``process`` dies, raise after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and not process.alive:
            raise ServerStartError(
                f"{what}: process exited with {process.returncode}\n{process.log_tail()}"
            )
        try:
            if ready():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            tail = process.log_tail() if process is not None else ""
            raise ServerStartError(f"{what}: not ready after {timeout:.0f}s\n{tail}")
        time.sleep(interval)


class ManagedProcess:
    """A subprocess in its own process group, logging to ``log_path``."""

    def __init__(
        self,
        argv: Sequence[str | os.PathLike[str]],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = [os.fspath(a) for a in argv]
        self.log_path = log_path
        with log_path.open("ab") as log:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        _LIVE.add(self)
        _install_sigterm_exit()

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def alive(self) -> bool:
        return self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    def log_tail(self, max_bytes: int = 4000) -> str:
        """Last bytes of the log, for error messages."""
        try:
            data = self.log_path.read_bytes()[-max_bytes:]
        except OSError:
            return ""
        return data.decode(errors="replace")

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the whole group, SIGKILL it after ``timeout``; always reap."""
        if self.alive:
            self._signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(timeout)
        # Helpers left in the group (or a leader that ignored SIGTERM) go now.
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout)
        _LIVE.discard(self)


def _stop_all() -> None:
    for proc in list(_LIVE):
        proc.stop(timeout=3.0)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _install_sigterm_exit() -> None:
    """Turn a plain SIGTERM into SystemExit so fixture teardowns and ``atexit`` still run.

    Only when nobody installed a handler already, and only from the main thread.
    """
    if threading.current_thread() is threading.main_thread() and (
        signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    ):
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


atexit.register(_stop_all)
