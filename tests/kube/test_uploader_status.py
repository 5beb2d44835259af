"""The uploader's status writes and outcome Event against a real apiserver, as its pod's
ServiceAccount with the chart's uploader ClusterRole: one PATCH and no GET when nothing
came between, a read only after a conflict, and never a second outcome or Event."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from tests.bed.controlplane import ControlPlane
from tests.bed.fixtures import unique_name
from tests.support import samples
from tests.support.kube import create, get
from voicevault import API_GROUP, API_VERSION, phases
from voicevault.contract import BatchItem, EncryptionDetails
from voicevault.crds.recording import PLURAL
from voicevault.operator.conditions import find
from voicevault.operator.kube import MERGE
from voicevault.uploader import kubeapi
from voicevault.uploader.recordingstatus import KubeStatusReporter
from voicevault.uploader.transfer import UploadResult

pytestmark = [pytest.mark.kube, pytest.mark.usefixtures("crds")]

POD = "voicevault-upload-node-a-1"
DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "voicevault.yaml"


def _shipped_uploader_rules() -> list[dict[str, Any]]:
    for doc in yaml.safe_load_all(DEPLOY.read_text()):
        if doc and doc["kind"] == "ClusterRole" and doc["metadata"]["name"].endswith("uploader"):
            rules: list[dict[str, Any]] = doc["rules"]
            return rules
    raise AssertionError("no uploader ClusterRole in deploy/voicevault.yaml")


class CountingApi(kubeapi.KubeApi):
    """The real client, counting what it sends; `lose_answers` drops the next answers."""

    def __init__(self, config: kubeapi.KubeConfig) -> None:
        super().__init__(config)
        self.sent: list[tuple[str, str]] = []
        self.lose_answers = 0

    def request(self, method: str, path: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.sent.append(
            (method, "events" if path.endswith("/events") else path.rsplit("/", 1)[-1])
        )
        answer = super().request(method, path, *args, **kwargs)
        if method == "PATCH" and self.lose_answers:
            self.lose_answers -= 1
            raise kubeapi.KubeApiError(0, "ConnectionResetError")  # written, answer lost
        return answer


@pytest.fixture
def uploader_api(
    kube_api: Any, control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> Iterator[CountingApi]:
    """A client with a token of a ServiceAccount bound to the shipped uploader role."""
    core: Any = k8s.CoreV1Api(kube_api)
    rbac: Any = k8s.RbacAuthorizationV1Api(kube_api)
    name = unique_name("uploader")
    core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    rbac.create_cluster_role({"metadata": {"name": name}, "rules": _shipped_uploader_rules()})
    rbac.create_cluster_role_binding(
        {
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": name,
            },
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        }
    )
    token = core.create_namespaced_service_account_token(
        name, namespace, {"spec": {"expirationSeconds": 3600}}
    ).status.token
    (tmp_path / "token").write_text(str(token))
    config = {
        "clusters": [
            {
                "name": "c",
                "cluster": {
                    "server": control_plane.server,
                    "certificate-authority": str(control_plane.ca_path),
                },
            }
        ],
        "users": [{"name": "u", "user": {"tokenFile": str(tmp_path / "token")}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    (tmp_path / "kubeconfig").write_text(json.dumps(config))
    yield CountingApi(kubeapi.from_kubeconfig(tmp_path / "kubeconfig"))
    rbac.delete_cluster_role_binding(name)
    rbac.delete_cluster_role(name)


def _scheduled(kube_api: Any, namespace: str, name: str) -> BatchItem:
    """A Recording the operator just scheduled on POD, and its batch item as batch_for
    gives it (resourceVersion and pod_base of the Scheduled write's answer)."""
    body = create(kube_api, PLURAL, namespace, samples.recording(name))
    status, _ = phases.scheduled("upload", 0, POD)
    written = _patch_status(kube_api, namespace, name, status | {"sid": "RE" + "0" * 32})
    return samples.batch_item(
        namespace=namespace,
        name=name,
        uid=body["metadata"]["uid"],
        resource_version=written["metadata"]["resourceVersion"],
        status=phases.pod_base(written["status"]),
    )


def _handed(kube_api: Any, namespace: str, name: str, **status: Any) -> BatchItem:
    """A queued Recording handed to POD, a running pod, without a Scheduled write: its
    item carries the claim, and `status` shows it applied (as `batch_items` gives it)."""
    body = create(kube_api, PLURAL, namespace, samples.recording(name))
    version = body["metadata"]["resourceVersion"]
    if status:
        version = _patch_status(kube_api, namespace, name, status)["metadata"]["resourceVersion"]
    claim, _ = phases.scheduled("upload", int(status.get("attempts", 0)), POD)
    return samples.batch_item(
        namespace=namespace,
        name=name,
        uid=body["metadata"]["uid"],
        resource_version=version,
        status=phases.pod_base(status | claim),
        claim=claim,
    )


def _patch_status(kube_api: Any, namespace: str, name: str, status: dict[str, Any]) -> Any:
    return k8s.CustomObjectsApi(kube_api).patch_namespaced_custom_object_status(
        API_GROUP, API_VERSION, namespace, PLURAL, name, {"status": status}, _content_type=MERGE
    )


def _result(item: BatchItem) -> UploadResult:
    details = EncryptionDetails("CR" + "1" * 32, "Y2Vr", "AAAAAAAAAAAAAAAA")
    return UploadResult(
        media_url=item.media_url, key=item.object_key, size=30, source_size=14, encryption=details
    )


def _outcome_events(kube_api: Any, namespace: str, name: str) -> list[Any]:
    events = k8s.CoreV1Api(kube_api).list_namespaced_event(namespace).items
    return [
        e for e in events if e.involved_object.name == name and e.reason in ("Stored", "Failed")
    ]


def _expected_event_name(kube_api: Any, namespace: str, name: str) -> str:
    rec = phases.RecordingView.from_body(get(kube_api, PLURAL, namespace, name))
    return f"{name}.{phases.outcome_key(rec)}"


def test_a_completed_write_is_one_patch_without_a_read_and_one_named_event(
    kube_api: Any, namespace: str, uploader_api: CountingApi
) -> None:
    item = _scheduled(kube_api, namespace, "call-1")
    reporter = KubeStatusReporter(uploader_api, POD, sleep=lambda _: None)
    assert reporter.completed(item, _result(item))
    assert uploader_api.sent == [("POST", "events"), ("PATCH", "status")]
    status = get(kube_api, PLURAL, namespace, "call-1")["status"]
    assert status["phase"] == "Completed" and status["encryptionDetails"]["iv"]
    stored = find(status["conditions"], "Stored")
    assert stored is not None and (stored["status"], stored["reason"]) == ("True", "Uploaded")
    assert stored["message"] == f"stored at {item.media_url}"
    # the operator's settlement has nothing left to write for it (no callback)
    rec = phases.RecordingView.from_body(get(kube_api, PLURAL, namespace, "call-1"))
    assert phases.settlement(rec, datetime.now(UTC), "op") is None
    (event,) = _outcome_events(kube_api, namespace, "call-1")
    assert event.metadata.name == _expected_event_name(kube_api, namespace, "call-1")
    assert (event.type, event.message) == ("Normal", f"stored at {item.media_url}")
    assert event.reporting_component == "voicevault-uploader"


def test_a_lost_answer_is_retried_without_a_second_outcome_or_event(
    kube_api: Any, namespace: str, uploader_api: CountingApi
) -> None:
    item = _scheduled(kube_api, namespace, "call-2")
    reporter = KubeStatusReporter(uploader_api, POD, sleep=lambda _: None)
    uploader_api.lose_answers = 1
    assert reporter.completed(item, _result(item))
    first = get(kube_api, PLURAL, namespace, "call-2")
    # once an answer is lost the pod builds on nothing it guessed: it reads, sees the
    # outcome already there, and writes (and posts) nothing more
    assert uploader_api.sent == [("POST", "events"), ("PATCH", "status"), ("GET", "status")]
    assert reporter.completed(item, _result(item))  # and once more, as a restarted pod would
    assert (
        get(kube_api, PLURAL, namespace, "call-2")["metadata"]["resourceVersion"]
        == (first["metadata"]["resourceVersion"])
    )
    assert len(_outcome_events(kube_api, namespace, "call-2")) == 1


def _progress_after_a_write_in_between(
    kube_api: Any, uploader_api: CountingApi, item: BatchItem
) -> tuple[KubeStatusReporter, dict[str, Any]]:
    """Someone writes after the batch was made; the pod's progress write then meets a
    409, reads, and writes again. The status it left."""
    _patch_status(kube_api, item.namespace, item.name, {"message": "someone else wrote"})
    reporter = KubeStatusReporter(uploader_api, POD, sleep=lambda _: None)
    assert reporter.progress(item, 5, 10)
    assert uploader_api.sent == [("PATCH", "status"), ("GET", "status"), ("PATCH", "status")]
    status: dict[str, Any] = get(kube_api, PLURAL, item.namespace, item.name)["status"]
    return reporter, status


def test_a_write_in_between_is_read_then_built_on_and_ownership_is_checked(
    kube_api: Any, namespace: str, uploader_api: CountingApi
) -> None:
    item = _scheduled(kube_api, namespace, "call-3")
    reporter, status = _progress_after_a_write_in_between(kube_api, uploader_api, item)
    assert status["phase"] == "Uploading" and status["message"] == "someone else wrote"
    # the operator gives the attempt to another pod: this one writes nothing more
    _patch_status(kube_api, namespace, "call-3", {"upload": {"pod": "another-pod"}})
    uploader_api.sent.clear()
    assert not reporter.completed(item, _result(item))
    assert uploader_api.sent == [("POST", "events"), ("PATCH", "status"), ("GET", "status")]
    assert get(kube_api, PLURAL, namespace, "call-3")["status"]["phase"] == "Uploading"


def test_a_handed_item_s_one_write_carries_its_claim_and_a_lost_answer_writes_nothing_more(
    kube_api: Any, namespace: str, uploader_api: CountingApi
) -> None:
    item = _handed(kube_api, namespace, "call-4", phase="Retrying", attempts=1)
    reporter = KubeStatusReporter(uploader_api, POD, sleep=lambda _: None)
    uploader_api.lose_answers = 1
    assert reporter.completed(item, _result(item))
    # one write claimed and settled it; the read after the lost answer shows it ours, done
    assert uploader_api.sent == [("POST", "events"), ("PATCH", "status"), ("GET", "status")]
    written = get(kube_api, PLURAL, namespace, "call-4")
    status = written["status"]
    assert (status["phase"], status["attempts"], status["upload"]["pod"]) == (
        "Completed",
        2,
        POD,
    )
    assert status["message"] != item.claim["message"], "the outcome's message, not the claim's"
    assert reporter.completed(item, _result(item))  # once more, as a restarted pod would
    again = get(kube_api, PLURAL, namespace, "call-4")
    assert again["metadata"]["resourceVersion"] == written["metadata"]["resourceVersion"]
    assert len(_outcome_events(kube_api, namespace, "call-4")) == 1


def test_a_handed_item_met_by_an_unrelated_write_is_claimed_on_what_was_read(
    kube_api: Any, namespace: str, uploader_api: CountingApi
) -> None:
    item = _handed(kube_api, namespace, "call-5")
    reporter, status = _progress_after_a_write_in_between(kube_api, uploader_api, item)
    assert (status["phase"], status["attempts"], status["upload"]["pod"]) == (
        "Uploading",
        1,
        POD,
    )
    uploader_api.sent.clear()
    assert reporter.completed(item, _result(item))  # built on its own answer: no claim again
    assert uploader_api.sent == [("POST", "events"), ("PATCH", "status")]
    assert get(kube_api, PLURAL, namespace, "call-5")["status"]["attempts"] == 1


@pytest.mark.parametrize(
    "meanwhile",
    [
        pytest.param(phases.scheduled("upload", 0, "another-pod").status, id="claimed-by-another"),
        pytest.param({"phase": "Failed", "attempts": 0}, id="settled"),
        pytest.param({"phase": "Retrying", "attempts": 1}, id="attempted-since"),
    ],
)
def test_a_handed_item_claimed_or_settled_meanwhile_is_not_written(
    kube_api: Any, namespace: str, uploader_api: CountingApi, meanwhile: dict[str, Any]
) -> None:
    item = _handed(kube_api, namespace, "call-6")
    before = _patch_status(kube_api, namespace, "call-6", meanwhile)
    reporter = KubeStatusReporter(uploader_api, POD, sleep=lambda _: None)
    assert not reporter.progress(item, 5, 10)
    assert uploader_api.sent == [("PATCH", "status"), ("GET", "status")]
    after = get(kube_api, PLURAL, namespace, "call-6")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
