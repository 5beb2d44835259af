"""The test bed's server ports: outside the kernel's ephemeral range, one worker's apart."""

from __future__ import annotations

import socket

import pytest

from tests.bed import processes
from tests.bed.processes import PORT_POOL, free_port


def test_ports_come_from_the_pool_below_the_ephemeral_range_and_never_twice() -> None:
    if processes._ephemeral_start() < PORT_POOL.stop:
        pytest.skip("this kernel's ephemeral range overlaps the pool: the kernel chooses")
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(p in processes._worker_slice(PORT_POOL) for p in ports)
    with socket.socket() as sock:  # each one is free: a server can listen on it
        sock.bind(("127.0.0.1", ports[0]))


def test_each_xdist_worker_has_a_share_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    shares = []
    for worker in ("gw0", "gw1", "gw2"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        shares.append(set(processes._worker_slice(PORT_POOL)))
    assert all(len(s) == len(PORT_POOL) // 3 for s in shares)
    assert not (shares[0] & shares[1] or shares[1] & shares[2] or shares[0] & shares[2])
