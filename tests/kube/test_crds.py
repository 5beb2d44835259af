"""The generated CRDs on a real apiserver: served, printed, and strict about bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from tests.support import samples
from tests.support.kube import create, custom, get, kubectl
from voicevault import API_GROUP, API_VERSION

pytestmark = [pytest.mark.kube, pytest.mark.usefixtures("crds")]

BAD_CREDENTIALS = [
    ("spec.secretRef", ..., "secretRef: Required value"),
    ("spec.secretRef.name", "Not_A_Name", "spec.secretRef.name"),
    ("spec.secretRef.name", "", "spec.secretRef.name"),
    ("spec.secretRef.accessKeyIdKey", "bad key!", "accessKeyIdKey"),
    ("spec.friendlyName", "x" * 65, "friendlyName"),
    ("spec", ..., "spec: Required value"),
]
BAD_SETTINGS = [
    (
        "spec.externalStorage.bucketUrl",
        "http://recordings.s3.amazonaws.com/",
        "must use https unless endpointUrl",
    ),
    ("spec.externalStorage.bucketUrl", "https://bucket.s3.amazonaws.com/x?y=1", "bucketUrl"),
    (
        "spec.externalStorage.credentialRef",
        ...,
        "bucketUrl and credentialRef are required when enabled",
    ),
    (
        "spec.externalStorage.objectKeyTemplate",
        "{accountSid}/{callSid}.wav",
        "must contain {recordingSid}",
    ),
    ("spec.retry", {"windowSeconds": -5}, "windowSeconds"),
    ("spec.encryption", {"publicKey": "just text"}, "publicKey must be a PEM block"),
    ("metadata.name", "other", "must be named 'default'"),
]
BAD_RECORDINGS = [
    ("spec.accountSid", "ACnothex", "accountSid"),
    ("spec.source", "Telepathy", "Unsupported value"),
    ("spec.duration", -1, "duration"),
    ("spec.channels", 3, "channels"),
    ("spec.mediaPath", "../other/secret.wav", "mediaPath must be relative"),
    ("spec.mediaPath", "/abs/call.wav", "mediaPath must be relative"),
    ("spec.mediaPath", "call.exe", "mediaPath"),
    ("spec.nodeName", ..., "nodeName: Required value"),
    ("spec.callSid", ..., "set callSid or conferenceSid"),
    ("spec.startTime", "yesterday", "startTime"),
]


def _rejected(api: Any, plural: str, namespace: str, body: dict[str, Any]) -> str:
    with pytest.raises(k8s.ApiException) as info:
        create(api, plural, namespace, body)
    assert info.value.status == 422, info.value.body
    return str(info.value.body)


@pytest.mark.parametrize(("path", "value", "message"), BAD_CREDENTIALS)
def test_bad_credentials_are_rejected(
    kube_api: Any, namespace: str, path: str, value: Any, message: str
) -> None:
    assert message in _rejected(
        kube_api, "awscredentials", namespace, samples.changed(samples.credential(), path, value)
    )


@pytest.mark.parametrize(("path", "value", "message"), BAD_SETTINGS)
def test_bad_settings_are_rejected(
    kube_api: Any, namespace: str, path: str, value: Any, message: str
) -> None:
    assert message in _rejected(
        kube_api, "voicestoragesettings", namespace, samples.changed(samples.setting(), path, value)
    )


@pytest.mark.parametrize(("path", "value", "message"), BAD_RECORDINGS)
def test_bad_recordings_are_rejected(
    kube_api: Any, namespace: str, path: str, value: Any, message: str
) -> None:
    assert message in _rejected(
        kube_api, "recordings", namespace, samples.changed(samples.recording(), path, value)
    )


def test_valid_examples_are_accepted_with_defaults(kube_api: Any, namespace: str) -> None:
    create(kube_api, "awscredentials", namespace, samples.credential())
    create(kube_api, "voicestoragesettings", namespace, samples.setting())
    create(kube_api, "recordings", namespace, samples.recording())
    setting = get(kube_api, "voicestoragesettings", namespace, "default")
    # the window is left out: the operator's --default-retry-window (7200 s) applies
    assert setting["spec"]["retry"] == {"initialBackoffSeconds": 30, "maxBackoffSeconds": 600}
    assert setting["spec"]["externalStorage"]["enabled"] is True


def test_recording_spec_is_immutable(kube_api: Any, namespace: str) -> None:
    create(kube_api, "recordings", namespace, samples.recording())
    with pytest.raises(k8s.ApiException) as info:
        custom(kube_api).patch_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, "recordings", "call-1", {"spec": {"duration": 43}}
        )
    assert "immutable" in str(info.value.body)


def test_status_subresource_separates_spec_and_status(kube_api: Any, namespace: str) -> None:
    api = custom(kube_api)
    create(kube_api, "awscredentials", namespace, samples.credential())
    api.patch_namespaced_custom_object_status(
        API_GROUP,
        API_VERSION,
        namespace,
        "awscredentials",
        "s3-writer",
        {"status": {"accessKeyIdSuffix": "WXYZ"}, "spec": {"friendlyName": "changed via status"}},
    )
    after_status = get(kube_api, "awscredentials", namespace, "s3-writer")
    assert after_status["status"]["accessKeyIdSuffix"] == "WXYZ"
    assert after_status["spec"]["friendlyName"] == "recordings bucket", "status writes ignore spec"
    api.patch_namespaced_custom_object(
        API_GROUP,
        API_VERSION,
        namespace,
        "awscredentials",
        "s3-writer",
        {"spec": {"friendlyName": "renamed"}, "status": {"accessKeyIdSuffix": "AAAA"}},
    )
    after_spec = get(kube_api, "awscredentials", namespace, "s3-writer")
    assert after_spec["spec"]["friendlyName"] == "renamed"
    assert after_spec["status"]["accessKeyIdSuffix"] == "WXYZ", "spec writes ignore status"
    assert after_spec["metadata"]["generation"] == 2 and after_status["metadata"]["generation"] == 1


def test_kubectl_get_shows_the_printer_columns(
    kubeconfig: Path, kube_api: Any, namespace: str
) -> None:
    create(kube_api, "recordings", namespace, samples.recording())
    out = kubectl(kubeconfig, "get", "recordings", "-n", namespace).stdout
    header = out.splitlines()[0].split()
    assert header[:4] == ["NAME", "PHASE", "NODE", "ERROR"]
    assert "URL" in header and "AGE" in header
    assert "node-a" in out
    wide = kubectl(kubeconfig, "get", "rec", "-n", namespace, "-o", "wide").stdout.splitlines()[0]
    assert "SID" in wide and "ATTEMPTS" in wide
    assert "call-1" in kubectl(kubeconfig, "get", "voicevault", "-n", namespace).stdout, (
        "category works"
    )
