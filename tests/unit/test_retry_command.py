"""`voicevault retry` finds its cluster: a kubeconfig's context namespace, or in a pod the
service account's; usage mistakes exit 2 with one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import config

from voicevault import cli
from voicevault.operator.retry_command import load_config

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "https://127.0.0.1:1"}}}}]
users: [{{name: u, user: {{token: not-a-secret}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u{namespace}}}}}]
current-context: x
"""


def _kubeconfig(tmp_path: Path, namespace: str | None) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG.format(namespace=f", namespace: {namespace}" if namespace else ""))
    return path


@pytest.fixture
def no_cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Neither a kubeconfig nor a pod's service account around."""
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)


def test_namespace_comes_from_the_kubeconfig_context(tmp_path: Path) -> None:
    sa = tmp_path / "sa-namespace"
    sa.write_text("from-the-pod\n")
    assert load_config(str(_kubeconfig(tmp_path, "tenant-a")), sa) == "tenant-a"


def test_a_context_without_namespace_means_default(tmp_path: Path) -> None:
    assert load_config(str(_kubeconfig(tmp_path, None)), tmp_path / "missing") == "default"


def test_in_a_pod_the_service_account_namespace_is_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_cluster: None
) -> None:
    loaded: list[bool] = []
    monkeypatch.setattr(config, "load_incluster_config", lambda: loaded.append(True))
    sa = tmp_path / "sa-namespace"
    sa.write_text("voicevault-system\n")
    assert load_config(None, sa) == "voicevault-system"
    assert loaded == [True]


def test_an_explicit_kubeconfig_that_is_missing_is_not_replaced_by_in_cluster(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(config, "load_incluster_config", lambda: pytest.fail("must not be tried"))
    with pytest.raises(config.ConfigException):
        load_config(str(tmp_path / "nope"), tmp_path / "sa")


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["retry", "--all-cached"], id="no-cluster"),
        pytest.param(["retry", "call-1", "-A"], id="all-namespaces-with-a-name"),
        pytest.param(["retry", "--all-cached", "--kubeconfig", "/nonexistent"], id="bad-file"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], no_cluster: None, argv: list[str]
) -> None:
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith("voicevault retry: error: "), err
