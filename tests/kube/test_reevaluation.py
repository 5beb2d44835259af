"""A credential or setting re-evaluated from the operator's cache starts from what it wrote.

A Secret's change re-evaluates the credentials and the setting that use it from the bodies
the operator keeps. Those bodies must hold the status the operator last wrote: a body from
before that write has no conditions, so the re-evaluation would write them again with a new
`lastTransitionTime`, the churn a GitOps tool sees as drift. The Secret's watch runs in a
thread of its own, so its event for a new Secret can arrive just after the credential's.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes import client as k8s

from tests.support.kube import create
from voicevault import API_GROUP, API_VERSION
from voicevault.operator.config import OperatorConfig
from voicevault.operator.controller import Controller
from voicevault.operator.kube import Kube

pytestmark = [pytest.mark.kube, pytest.mark.usefixtures("crds")]


class _Clock:
    """Moves a minute on every reading, so a rewritten condition gets a new timestamp."""

    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(minutes=1)
        return self.now


@pytest.fixture
def controller(kube_api: Any) -> Iterator[Controller]:
    kube = Kube(kube_api)  # the session's admin client: not closed here
    yield Controller(kube, OperatorConfig(), clock=_Clock())
    kube.close(client=False)


def _credential(kube_api: Any, namespace: str) -> dict[str, Any]:
    keys = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "not-a-real-secret"}
    k8s.CoreV1Api(kube_api).create_namespaced_secret(
        namespace,
        k8s.V1Secret(
            metadata=k8s.V1ObjectMeta(name="keys"),
            data={k: base64.b64encode(v.encode()).decode() for k, v in keys.items()},
        ),
    )
    return create(
        kube_api,
        "awscredentials",
        namespace,
        {
            "kind": "AwsCredential",
            "metadata": {"name": "writer"},
            "spec": {"secretRef": {"name": "keys"}},
        },
    )


def _read(kube_api: Any, namespace: str) -> dict[str, Any]:
    found = k8s.CustomObjectsApi(kube_api).get_namespaced_custom_object(
        API_GROUP, API_VERSION, namespace, "awscredentials", "writer"
    )
    assert isinstance(found, dict)
    return found


def test_a_secret_event_after_the_credential_was_evaluated_writes_nothing(
    controller: Controller, kube_api: Any, namespace: str
) -> None:
    created = _credential(kube_api, namespace)

    async def credential_then_its_secret() -> None:
        await controller.credentials.on_credential(created, refresh_settings=False)
        await controller.on_secret(namespace, "keys")  # the Secret's late watch event

    asyncio.run(credential_then_its_secret())
    after_first = _read(kube_api, namespace)
    assert after_first["status"]["conditions"][0]["reason"] == "SecretFound"
    # the cached body is the one written, so the second evaluation found nothing new
    asyncio.run(controller.on_secret(namespace, "keys"))
    assert (
        _read(kube_api, namespace)["metadata"]["resourceVersion"]
        == (after_first["metadata"]["resourceVersion"])
    )
