"""pytest plugin: one whole stack per test session (per xdist worker) for the e2e and
fault tiers: its own apiserver, moto, the operator process, stand-in nodes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from tests.bed.controlplane import ControlPlane
from tests.bed.faultproxy import FaultProxy
from tests.bed.s3_moto import MotoS3
from tests.bed.stack import Stack
from tests.support.callbacks import CallbackReceiver


@contextlib.contextmanager
def own_stack(
    moto_s3: MotoS3, tmp_path_factory: pytest.TempPathFactory, name: str, **options: Any
) -> Iterator[Stack]:
    """A stack on a control plane of its own; `options` go to :class:`Stack`."""
    with ControlPlane(tmp_path_factory.mktemp(f"{name}-controlplane")) as plane:
        s = Stack(plane, moto_s3, tmp_path_factory.mktemp(name), **options).start()
        try:
            yield s
        finally:
            s.stop()


def running(stack: Stack) -> Stack:
    """The stack with its operator running (a test before may have killed it), and its
    webhook serving if it has one."""
    if not stack.operator.alive:
        stack.operator.start()
        if stack.webhook:
            stack.wait_webhook()
    return stack


@pytest.fixture(scope="session")
def stack(moto_s3: MotoS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A control plane of its own: its operator watches every namespace, and must not
    reconcile the objects other tiers create to test the apiserver alone."""
    with own_stack(moto_s3, tmp_path_factory, "stack") as s:
        yield s


@pytest.fixture
def live_stack(stack: Stack) -> Stack:
    """The stack with its operator running (a test before may have killed it)."""
    return running(stack)


@pytest.fixture
def callbacks() -> Iterator[CallbackReceiver]:
    receiver = CallbackReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def proxy(moto_s3: MotoS3) -> Iterator[FaultProxy]:
    """A fault-injecting proxy in front of the stack's S3."""
    with FaultProxy(moto_s3.endpoint_url) as p:
        yield p
