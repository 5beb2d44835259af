"""pytest plugin: a real Kubernetes API and real S3 servers, started only when requested.

Load with ``pytest_plugins = ["tests.bed.fixtures"]``. Session fixtures run once per
pytest-xdist worker. A binary that cannot be built makes the fixture error with the
build output; nothing is ever skipped silently.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from tests.bed.controlplane import ControlPlane, api_client
from tests.bed.s3_common import S3Account, S3Server
from tests.bed.s3_minio import MinioS3
from tests.bed.s3_moto import MotoS3

S3_SERVERS = ["moto", "minio"]


def unique_name(prefix: str, hint: str = "", max_len: int = 63) -> str:
    """DNS-1123 label (also a valid bucket name): ``prefix-hint-random``, lower case."""
    slug = re.sub(r"[^a-z0-9-]+", "-", hint.lower()).strip("-")
    suffix = uuid.uuid4().hex[:8]
    head = f"{prefix}-{slug}" if slug else prefix
    return f"{head[: max_len - len(suffix) - 1].rstrip('-')}-{suffix}"


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver for this session (this xdist worker)."""
    with ControlPlane(tmp_path_factory.mktemp("controlplane")) as plane:
        yield plane


@pytest.fixture(scope="session")
def kubeconfig(control_plane: ControlPlane) -> Path:
    """Path of the admin kubeconfig (user in ``system:masters``)."""
    return control_plane.admin_kubeconfig


@pytest.fixture(scope="session")
def kube_api(kubeconfig: Path) -> Iterator[Any]:
    """``kubernetes.client.ApiClient`` authenticated as the admin."""
    api = api_client(kubeconfig)
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def namespace(kube_api: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace; deleted afterwards without waiting (no controller-manager)."""
    name = unique_name("t", request.node.name, max_len=40)
    core = k8s.CoreV1Api(kube_api)
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    yield name
    try:
        core.delete_namespace(name)
    except k8s.ApiException as exc:
        if exc.status != 404:
            raise


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    """moto server with IAM enforcement."""
    with MotoS3(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="session")
def minio_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinioS3]:
    """MinIO server (checksum-verifying S3)."""
    with MinioS3(tmp_path_factory.mktemp("minio")) as server:
        yield server


@pytest.fixture(scope="session", params=S3_SERVERS, ids=S3_SERVERS)
def s3_server(request: pytest.FixtureRequest) -> S3Server:
    """Each S3 implementation in turn; only the requested server is started."""
    server: S3Server = request.getfixturevalue(f"{request.param}_s3")
    return server


@pytest.fixture
def s3_account(s3_server: S3Server) -> S3Account:
    """A fresh bucket and a seed-policy user allowed to write under ``calls/``."""
    return s3_server.add_bucket(unique_name("vv"), "calls/")
