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
    url = "https://recordings.s3.eu-west-1.amazonaws.com/calls/" + "x" * 120 + ".wav"
    custom(kube_api).patch_namespaced_custom_object_status(
        API_GROUP,
        API_VERSION,
        namespace,
        "recordings",
        "call-1",
        {"status": {"phase": "Pending", "reason": "SettingNotReady", "mediaUrl": url}},
    )
    out = kubectl(kubeconfig, "get", "recordings", "-n", namespace).stdout
    header = out.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "REASON", "NODE", "ERROR", "AGE"], out
    assert out.splitlines()[1].split()[:4] == ["call-1", "Pending", "SettingNotReady", "node-a"]
    assert url not in out and max(len(line) for line in out.splitlines()) < 100, "narrow"
    wide = kubectl(kubeconfig, "get", "rec", "-n", namespace, "-o", "wide").stdout
    assert "SID" in wide and "ATTEMPTS" in wide and "MEDIA URL" in wide and url in wide
    assert "call-1" in kubectl(kubeconfig, "get", "voicevault", "-n", namespace).stdout, (
        "category works"
    )


@pytest.mark.parametrize(
    ("plural", "body", "shown"),
    [
        (
            "voicestoragesettings",
            samples.changed(samples.setting(), "metadata.name", "other"),
            "got 'other'",
        ),
        (
            "voicestoragesettings",
            samples.changed(
                samples.setting(),
                "spec.externalStorage.objectKeyTemplate",
                "{accountSid}/{callSid}.wav",
            ),
            "got '{accountSid}/{callSid}.wav'",
        ),
        (
            "voicestoragesettings",
            samples.changed(
                samples.setting(), "spec.externalStorage.bucketUrl", "http://rec.s3.amazonaws.com/"
            ),
            "must use https unless endpointUrl is set, got 'http://rec.s3.amazonaws.com/'",
        ),
        (
            "voicestoragesettings",
            samples.changed(samples.setting(), "spec.encryption", {"publicKey": "just text"}),
            "got 'just text'",
        ),
        (
            "recordings",
            samples.changed(samples.recording(), "spec.mediaPath", "a/../../b/secret.wav"),
            "got 'a/../../b/secret.wav'",
        ),
    ],
)
def test_cel_errors_quote_the_value_not_its_type(
    kube_api: Any, namespace: str, plural: str, body: dict[str, Any], shown: str
) -> None:
    assert shown in _rejected(kube_api, plural, namespace, body)


def test_a_url_with_user_info_is_never_echoed(kube_api: Any, namespace: str) -> None:
    url = "http://AKIAEXAMPLE:s3cr3t@rec.s3.amazonaws.com/"
    body = samples.changed(samples.setting(), "spec.externalStorage.bucketUrl", url)
    message = _rejected(kube_api, "voicestoragesettings", namespace, body)
    assert "must use https" in message and "s3cr3t" not in message


def test_a_garbage_url_gets_one_accurate_message(kube_api: Any, namespace: str) -> None:
    body = samples.changed(samples.setting(), "spec.externalStorage.bucketUrl", "not a url")
    message = _rejected(kube_api, "voicestoragesettings", namespace, body)
    assert "spec.externalStorage.bucketUrl" in message and "not a url" in message
    assert "https" not in message.replace("^https?://", ""), message


def test_kubectl_explain_documents_nested_fields(kubeconfig: Path) -> None:
    for field, words in [
        ("recordings.spec.callSid", "SID of the call"),
        ("recordings.status.nextRetryTime", "next attempt"),
        ("recordings.status.conditions.reason", "CamelCase"),
        ("voicestoragesettings.status.observedGeneration", "generation"),
    ]:
        out = kubectl(kubeconfig, "explain", field, "--api-version", f"{API_GROUP}/{API_VERSION}")
        assert words in out.stdout, out.stdout
