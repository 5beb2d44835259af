"""Helpers for the chart tests: the real helm binary, rendered manifests, Pod Security."""

from __future__ import annotations

import copy
import os
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.bed import binaries
from tests.support.kube import REPO

CHART = REPO / "charts" / "voicevault"
CHART_META: dict[str, Any] = yaml.safe_load((CHART / "Chart.yaml").read_text())
APP_VERSION = str(CHART_META["appVersion"])
SCHEMA_ERROR = "values don't meet the specifications of the schema"
PSA_LABEL = "pod-security.kubernetes.io/enforce"


class Helm:
    """The pinned helm, with its own cache/config/data homes (nothing of the user's)."""

    def __init__(self, home: Path, kubeconfig: Path | None = None) -> None:
        self.home = home
        self.kubeconfig = kubeconfig

    def with_kubeconfig(self, kubeconfig: Path) -> Helm:
        return Helm(self.home, kubeconfig)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HELM_", "KUBECONFIG"))}
        for name in ("CACHE", "CONFIG", "DATA"):
            env[f"HELM_{name}_HOME"] = str(self.home / name.lower())
        if self.kubeconfig is not None:
            env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    def run(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(binaries.helm()), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
            )
        return proc

    def template(
        self,
        *,
        release: str = "voicevault",
        namespace: str = "voicevault-system",
        sets: Sequence[str] = (),
        extra: Sequence[str] = (),
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        args = ["template", release, str(CHART), "--namespace", namespace, *extra]
        for item in sets:
            args += ["--set", item]
        return self.run(*args, check=check)

    def render(
        self,
        *,
        release: str = "voicevault",
        namespace: str = "voicevault-system",
        sets: Sequence[str] = (),
        extra: Sequence[str] = (),
    ) -> list[dict[str, Any]]:
        """The manifests `helm template` produces, as objects."""
        out = self.template(release=release, namespace=namespace, sets=sets, extra=extra)
        return documents(out.stdout)


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(docs: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of `kind` (and `name`); fails when there is not exactly one."""
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def kinds(docs: Iterable[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def fullname(release: str) -> str:
    return release if "voicevault" in release else f"{release}-voicevault"


def pod_from_template(deployment: dict[str, Any], name: str, namespace: str) -> dict[str, Any]:
    """A bare Pod with the Deployment's pod template, as a ReplicaSet would create it."""
    template = copy.deepcopy(deployment["spec"]["template"])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": template["metadata"]["labels"],
        },
        "spec": template["spec"],
    }


def container_args(deployment: dict[str, Any]) -> list[str]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args: list[str] = container["args"]
    return args
