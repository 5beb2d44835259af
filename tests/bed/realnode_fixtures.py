"""pytest plugin: the real one-node cluster, once per session (all cluster tests share one
xdist group, so one worker holds the node), with the chart installed on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.bed.cluster_stack import ClusterStack
from tests.bed.realnode import BRIDGE_IP, RealNode
from tests.bed.s3_minio import MinioS3
from tests.bed.s3_moto import MotoS3
from tests.support.callbacks import CallbackReceiver

CLUSTER_GROUP = "realnode"


@pytest.fixture(scope="session")
def real_node() -> Iterator[RealNode]:
    with RealNode() as node:
        yield node


@pytest.fixture(scope="session")
def cluster_moto(real_node: RealNode, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    """moto with IAM enforcement on the bridge address, where pods reach it."""
    with MotoS3(tmp_path_factory.mktemp("cluster-moto"), host=BRIDGE_IP) as server:
        yield server


@pytest.fixture(scope="session")
def cluster_minio(
    real_node: RealNode, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MinioS3]:
    with MinioS3(tmp_path_factory.mktemp("cluster-minio"), host=BRIDGE_IP) as server:
        yield server


@pytest.fixture(scope="session")
def cluster(
    real_node: RealNode, cluster_moto: MotoS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClusterStack]:
    """``helm install`` of the chart on the real node (operator in its pod)."""
    stack = ClusterStack(real_node, cluster_moto, tmp_path_factory.mktemp("cluster"))
    stack.install()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def bridge_callbacks() -> Iterator[CallbackReceiver]:
    receiver = CallbackReceiver(host=BRIDGE_IP).start()
    yield receiver
    receiver.stop()
