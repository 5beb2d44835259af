"""Fixtures of the chart tests: helm with a private home, namespaces with Pod Security."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s

from tests.bed.fixtures import unique_name
from tests.helm.chart import PSA_LABEL, Helm


@pytest.fixture(scope="session")
def helm_cli(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(tmp_path_factory.mktemp("helm-home"))


def make_namespace(api: Any, prefix: str, labels: dict[str, str] | None = None) -> str:
    name = unique_name(prefix)
    k8s.CoreV1Api(api).create_namespace(
        k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name, labels=labels))
    )
    return name


def drop_namespace(api: Any, name: str) -> None:
    """Delete without waiting: there is no controller-manager to finish it."""
    try:
        k8s.CoreV1Api(api).delete_namespace(name)
    except k8s.ApiException as exc:
        if exc.status != 404:
            raise


@pytest.fixture
def restricted_namespace(kube_api: Any) -> Iterator[str]:
    """A namespace enforcing Pod Security "restricted" (latest)."""
    name = make_namespace(
        kube_api, "restricted", {PSA_LABEL: "restricted", f"{PSA_LABEL}-version": "latest"}
    )
    yield name
    drop_namespace(kube_api, name)
