"""deploy/voicevault.yaml (the chart for users without Helm) and examples/ (GitOps)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.bed import binaries
from tests.helm.chart import PSA_LABEL, documents, find
from tests.support.kube import REPO, kubectl

DEPLOY = REPO / "deploy"
EXAMPLES = REPO / "examples"
SYSTEM_NAMESPACE = "voicevault-system"


def render_deploy(output: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env["HELM"] = str(binaries.helm())
    subprocess.run(
        ["bash", str(DEPLOY / "render.sh"), str(output)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def ensure_namespace(kubeconfig: Path, name: str) -> None:
    manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    if kubectl(kubeconfig, "get", "namespace", name, check=False).returncode != 0:
        kubectl(kubeconfig, "create", "-f", "-", input_text=json.dumps(manifest))


def dry_run(kubeconfig: Path, *args: str, input_text: str | None = None) -> str:
    out = kubectl(kubeconfig, "apply", "--dry-run=server", *args, input_text=input_text)
    return out.stdout


# --- deploy/voicevault.yaml ------------------------------------------------------------


@pytest.mark.helm
def test_deploy_manifest_matches_the_chart(tmp_path: Path) -> None:
    fresh = tmp_path / "voicevault.yaml"
    render_deploy(fresh)
    committed = (DEPLOY / "voicevault.yaml").read_text()
    assert fresh.read_text() == committed, (
        "deploy/voicevault.yaml is stale: run deploy/render.sh and commit the result"
    )


def test_deploy_manifest_is_complete() -> None:
    docs = documents((DEPLOY / "voicevault.yaml").read_text())
    namespace = find(docs, "Namespace", SYSTEM_NAMESPACE)
    # uploader pods (hostPath) run in the same namespace with the default values
    assert namespace["metadata"]["labels"][PSA_LABEL] == "privileged"
    assert docs[0] is namespace  # created before anything that lives in it
    assert all(d["metadata"].get("namespace", SYSTEM_NAMESPACE) == SYSTEM_NAMESPACE for d in docs)
    assert "CustomResourceDefinition" not in {d["kind"] for d in docs}  # applied first
    assert not any("helm.sh/hook" in (d["metadata"].get("annotations") or {}) for d in docs)
    find(docs, "Deployment", "voicevault")


@pytest.mark.kube
@pytest.mark.usefixtures("crds")
def test_deploy_manifest_applies(kubeconfig: Path) -> None:
    ensure_namespace(kubeconfig, SYSTEM_NAMESPACE)  # a dry run creates nothing to put in
    out = dry_run(kubeconfig, "-f", str(DEPLOY / "voicevault.yaml"))
    for name in (
        "deployment.apps/voicevault",
        "service/voicevault",
        "serviceaccount/voicevault-operator",
        "serviceaccount/voicevault-uploader",
        "clusterrole.rbac.authorization.k8s.io/voicevault-operator",
        "role.rbac.authorization.k8s.io/voicevault-operator-uploads",
    ):
        assert f"{name} " in out, out


# --- examples/ ------------------------------------------------------------------------


def example_docs() -> dict[Path, list[dict[str, Any]]]:
    return {path: documents(path.read_text()) for path in sorted(EXAMPLES.rglob("*.yaml"))}


def ensure_example_namespaces(kubeconfig: Path) -> None:
    for docs in example_docs().values():
        for doc in docs:
            if doc["kind"] == "Namespace":
                ensure_namespace(kubeconfig, doc["metadata"]["name"])


def test_examples_hold_no_secrets() -> None:
    every = [doc for docs in example_docs().values() for doc in docs]
    assert every
    assert "Secret" not in {d["kind"] for d in every}
    assert all(d["metadata"].get("namespace") or d["kind"] == "Namespace" for d in every)


@pytest.mark.kube
@pytest.mark.usefixtures("crds")
def test_examples_validate_against_the_crds(kubeconfig: Path) -> None:
    ensure_example_namespaces(kubeconfig)  # a dry run creates nothing to put in
    out = dry_run(kubeconfig, "--recursive", "-f", str(EXAMPLES))
    expected = {
        "awscredential.voicevault.io/s3-writer",
        "awscredential.voicevault.io/minio-writer",
        "voicestoragesetting.voicevault.io/default",
        "recording.voicevault.io/call-0001",
    }
    for name in expected:
        assert f"{name} " in out, out
    assert out.count("voicestoragesetting.voicevault.io/default ") == 2


@pytest.mark.kube
@pytest.mark.usefixtures("crds")
def test_a_broken_example_is_refused(kubeconfig: Path) -> None:
    """The dry run above really validates: the same file with one mistake fails."""
    path = EXAMPLES / "minio" / "20-voicestoragesetting.yaml"
    (setting,) = documents(path.read_text())
    ensure_namespace(kubeconfig, setting["metadata"]["namespace"])
    broken = copy.deepcopy(setting)
    broken["spec"]["externalStorage"]["objectKeyTemplate"] = "{accountSid}/{callSid}.wav"
    out = kubectl(
        kubeconfig,
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        input_text=yaml.safe_dump(broken),
        check=False,
    )
    assert out.returncode != 0
    assert "must contain {recordingSid}" in out.stderr


@pytest.mark.kube
@pytest.mark.usefixtures("crds")
def test_examples_are_stored_as_written(kubeconfig: Path) -> None:
    """Defaults are spelled out: the API server adds nothing, so GitOps sees no diff."""
    ensure_example_namespaces(kubeconfig)
    for path, docs in example_docs().items():
        for doc in docs:
            if doc["kind"] == "Namespace":
                continue
            stored = json.loads(
                kubectl(
                    kubeconfig, "apply", "--dry-run=server", "-o", "json", "-f", str(path)
                ).stdout
            )
            assert stored["spec"] == doc["spec"], path.relative_to(REPO)
