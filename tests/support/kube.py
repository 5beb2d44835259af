"""Small helpers for tests that talk to the real apiserver: kubectl, waiting, objects."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client as k8s

from tests.bed import binaries
from voicevault import API_GROUP, API_VERSION

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def kubectl(
    kubeconfig: Path,
    *args: str,
    input_text: str | None = None,
    check: bool = True,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run the real kubectl against the test apiserver.

    Its discovery cache sits next to the kubeconfig: one written here before the CRDs
    were served must never reach a person's ~/.kube/cache (kubectl trusts it for hours).
    """
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBECACHEDIR")}
    cache = kubeconfig.parent / "kubectl-cache"
    proc = subprocess.run(
        [
            str(binaries.kubectl()),
            "--kubeconfig",
            str(kubeconfig),
            "--cache-dir",
            str(cache),
            *args,
        ],
        input=input_text,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr}")
    return proc


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float = 60,
    interval: float = 0.2,
    what: str = "condition",
) -> T:
    """Poll until `predicate` returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def as_dict(value: object) -> dict[str, Any]:
    """The kubernetes client types custom objects as `object`; they are JSON dicts."""
    assert isinstance(value, dict)
    return value


def custom(api: Any) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(api)


def get(api: Any, plural: str, namespace: str, name: str) -> dict[str, Any]:
    return as_dict(
        custom(api).get_namespaced_custom_object(API_GROUP, API_VERSION, namespace, plural, name)
    )


def create(api: Any, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    body = {"apiVersion": f"{API_GROUP}/{API_VERSION}", **body}
    return as_dict(
        custom(api).create_namespaced_custom_object(API_GROUP, API_VERSION, namespace, plural, body)
    )


def apply_crds(kubeconfig: Path) -> None:
    kubectl(kubeconfig, "apply", "-f", str(REPO / "crds"))
    for crd in ("awscredentials", "voicestoragesettings", "recordings"):
        kubectl(
            kubeconfig,
            "wait",
            "--for=condition=Established",
            f"crd/{crd}.{API_GROUP}",
            "--timeout=60s",
        )
    wait_for(lambda: _discovery_serves_crds(kubeconfig), what="discovery to serve the CRDs")


def _discovery_serves_crds(kubeconfig: Path) -> bool:
    """Established is not yet served: discovery lags it, and kubectl caches what it saw."""
    raw = kubectl(kubeconfig, "get", "--raw", f"/apis/{API_GROUP}/{API_VERSION}", check=False)
    if raw.returncode != 0:
        return False
    served = {r["name"] for r in json.loads(raw.stdout).get("resources", [])}
    return {"awscredentials", "voicestoragesettings", "recordings"} <= served


def phases(api: Any, namespace: str, names: Sequence[str]) -> dict[str, str | None]:
    out = {}
    for name in names:
        out[name] = (get(api, "recordings", namespace, name).get("status") or {}).get("phase")
    return out


def apiserver_request_counts(plane: Any) -> dict[tuple[str, str, str, str], float]:
    """`apiserver_request_total` by (verb, resource, subresource, code), from the apiserver."""
    from bench import apimetrics

    return apimetrics.requests_by_code(plane.metrics())
