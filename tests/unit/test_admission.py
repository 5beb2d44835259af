"""Admission decisions: what the webhook refuses, with which message, and what it lets by."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import jsonpatch
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.keys import key_pair
from voicevault.crds.recording import FINALIZER
from voicevault.operator.admission import (
    ROUTES,
    decide,
    finalizer_patch,
    mutation_response,
    review_response,
    summary,
)
from voicevault.uploader import envelope
from voicevault.uploader.bucketurl import BucketUrlError, parse_bucket_url

NS = "acme"
GOOD_URL = "https://calls-acme.s3.eu-west-1.amazonaws.com/recordings"


def setting(**storage: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "externalStorage": {"bucketUrl": GOOD_URL, "credentialRef": {"name": "writer"}, **storage}
    }
    return {"metadata": {"name": "default", "namespace": NS}, "spec": spec}


def credential(**ref: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "writer", "namespace": NS},
        "spec": {"secretRef": {"name": "writer-keys", **ref}},
    }


def request(
    obj: dict[str, Any], operation: str = "CREATE", old: dict[str, Any] | None = None
) -> dict[str, Any]:
    kind = "VoiceStorageSetting" if "externalStorage" in obj.get("spec", {}) else "AwsCredential"
    return {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": "voicevault.io", "version": "v1alpha1", "kind": kind},
        "namespace": NS,
        "name": obj["metadata"]["name"],
        "operation": operation,
        "object": obj,
        "oldObject": old,
    }


def with_spec(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    node = out["spec"]
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return out


def _rsa_1024_pem() -> str:
    return key_pair(1024).public_pem.decode()


def _private_pem() -> str:
    return key_pair().private_pem.decode()


def _ec_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def test_a_good_setting_and_credential_are_allowed() -> None:
    good = with_spec(setting(), "encryption.publicKey", key_pair().public_pem.decode())
    good = with_spec(good, "retry", {"initialBackoffSeconds": 30, "maxBackoffSeconds": 30})
    assert decide(request(good)).allowed
    assert decide(request(credential(sessionTokenKey="AWS_SESSION_TOKEN"))).allowed


@pytest.mark.parametrize(
    ("storage", "quoted"),
    [
        pytest.param(
            {"bucketUrl": "https://minio.example.net/calls"},
            "'https://minio.example.net/calls'",
            id="non-aws-host-without-endpoint",
        ),
        pytest.param(
            {"bucketUrl": "https://calls.s3.amazonaws.com/a//b"},
            "'https://calls.s3.amazonaws.com/a//b'",
            id="double-slash",
        ),
        pytest.param(
            {"bucketUrl": "https://My_Bucket.s3.amazonaws.com/x"},
            "'https://My_Bucket.s3.amazonaws.com/x'",
            id="uppercase-underscore-bucket",
        ),
        pytest.param(
            {"bucketUrl": "https://s3.amazonaws.com/calls", "region": "moon"},
            "'https://s3.amazonaws.com/calls' (region 'moon')",
            id="bad-region",
        ),
        pytest.param(
            {"bucketUrl": "http://minio:9000/calls", "endpointUrl": "http://minio:9001"},
            "'http://minio:9000/calls' (endpointUrl 'http://minio:9001')",
            id="port-mismatch",
        ),
    ],
)
def test_a_bad_bucket_url_is_refused_with_the_parsers_message_and_the_value(
    storage: dict[str, Any], quoted: str
) -> None:
    """Each id names a rule of the parser; the wording is the parser's, whatever it says."""
    with pytest.raises(BucketUrlError) as parser:
        parse_bucket_url(
            storage["bucketUrl"],
            endpoint_url=storage.get("endpointUrl"),
            region=storage.get("region"),
        )
    decision = decide(request(setting(**storage)))
    assert decision.problems == (f"spec.externalStorage.bucketUrl {quoted}: {parser.value}",)


def test_a_password_in_the_bucket_url_is_not_echoed() -> None:
    decision = decide(request(setting(bucketUrl="https://me:hunter2@calls.s3.amazonaws.com/")))
    assert not decision.allowed
    assert "hunter2" not in decision.message
    assert "'https://***@calls.s3.amazonaws.com/'" in decision.message


@pytest.mark.parametrize(
    ("make_pem", "block"),
    [
        pytest.param(_rsa_1024_pem, "PUBLIC KEY", id="rsa-1024"),
        pytest.param(
            lambda: "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            "PUBLIC KEY",
            id="garbage-pem",
        ),
        pytest.param(lambda: "ssh-rsa AAAAB3Nza me@host", None, id="not-pem"),
        pytest.param(_ec_pem, "PUBLIC KEY", id="ec-key"),
        pytest.param(_private_pem, None, id="private"),
    ],
)
def test_an_unusable_public_key_is_refused(make_pem: Any, block: str | None) -> None:
    """Each id names a rule of the uploader's key check; the wording is its own."""
    pem: str = make_pem()
    with pytest.raises(envelope.InvalidPublicKey) as check:
        envelope.load_public_key(pem)
    decision = decide(request(with_spec(setting(), "encryption.publicKey", pem)))
    where = f" ('-----BEGIN {block}-----' block)" if block else ""
    assert decision.problems == (f"spec.encryption.publicKey{where}: {check.value}",)
    for line in pem.splitlines()[1:-1]:
        assert line not in decision.message, "the key itself is never echoed"


def test_retry_bounds_are_checked_with_the_users_numbers() -> None:
    bad = with_spec(setting(), "retry", {"initialBackoffSeconds": 300, "maxBackoffSeconds": 60})
    decision = decide(request(bad))
    assert decision.problems == (
        "spec.retry: maxBackoffSeconds 60 must be at least initialBackoffSeconds 300",
    )


def test_out_of_schema_values_are_refused_too() -> None:
    """An older CRD without the bounds: the model's own limits still hold."""
    bad = with_spec(setting(), "retry", {"initialBackoffSeconds": 0})
    decision = decide(request(bad))
    assert not decision.allowed
    assert decision.message.startswith("spec.retry.initialBackoffSeconds: ")


def test_every_problem_is_listed_in_one_refusal() -> None:
    bad = setting(bucketUrl="https://minio.example.net/calls")
    bad = with_spec(bad, "encryption.publicKey", _rsa_1024_pem())
    bad = with_spec(bad, "retry", {"initialBackoffSeconds": 10, "maxBackoffSeconds": 5})
    decision = decide(request(bad))
    assert len(decision.problems) == 3
    assert decision.message == "; ".join(decision.problems)


def test_cross_namespace_references_are_refused() -> None:
    bad = setting(credentialRef={"name": "writer", "namespace": "victim"})
    bad = with_spec(
        bad,
        "statusCallback",
        {
            "url": "https://cb.example/",
            "signingKeyRef": {"name": "s", "key": "k", "namespace": "v"},
        },
    )
    problems = decide(request(bad)).problems
    assert "credentialRef.namespace 'victim'" in problems[0]
    assert "own namespace 'acme'" in problems[0]
    assert "signingKeyRef.namespace 'v'" in problems[1]
    assert decide(request(setting(credentialRef={"name": "w", "namespace": NS}))).allowed


@pytest.mark.parametrize(
    ("ref", "why"),
    [
        pytest.param({"namespace": "victim"}, "secretRef.namespace 'victim'", id="cross-namespace"),
        pytest.param(
            {"accessKeyIdKey": "key", "secretAccessKeyKey": "key"},
            "spec.secretRef.secretAccessKeyKey 'key' is also accessKeyIdKey",
            id="same-key-twice",
        ),
        pytest.param(
            {"sessionTokenKey": "AWS_SECRET_ACCESS_KEY"},
            "sessionTokenKey 'AWS_SECRET_ACCESS_KEY' is also secretAccessKeyKey",
            id="token-is-the-secret",
        ),
        pytest.param({"name": "Not_A_Name"}, "spec.secretRef.name: ", id="bad-name"),
    ],
)
def test_a_bad_secret_reference_is_refused(ref: dict[str, Any], why: str) -> None:
    decision = decide(request(credential(**ref)))
    assert not decision.allowed
    assert why in decision.message


def test_a_credential_without_secret_ref_is_refused() -> None:
    bare = {"metadata": {"name": "writer", "namespace": NS}, "spec": {}}
    req = request(bare) | {"kind": {"kind": "AwsCredential"}}
    assert decide(req).message.startswith("spec.secretRef: ")


def test_metadata_only_updates_are_never_refused() -> None:
    """A bad object from before the webhook can still get labels or lose finalizers."""
    bad = setting(bucketUrl="https://minio.example.net/calls")
    relabelled = copy.deepcopy(bad)
    relabelled["metadata"]["labels"] = {"team": "a"}
    assert decide(request(relabelled, "UPDATE", old=bad)).allowed
    changed = with_spec(bad, "retry", {"initialBackoffSeconds": 5})
    assert not decide(request(changed, "UPDATE", old=bad)).allowed


@pytest.mark.parametrize(
    "req",
    [
        pytest.param({"kind": {"kind": "Recording"}, "operation": "CREATE"}, id="recording"),
        pytest.param({"kind": {"kind": "VoiceStorageSetting"}, "operation": "DELETE"}, id="delete"),
        pytest.param({}, id="empty"),
    ],
)
def test_what_is_not_ours_is_allowed(req: dict[str, Any]) -> None:
    assert decide(req).allowed


def test_review_response_is_admission_v1_with_the_request_uid() -> None:
    bad = request(setting(bucketUrl="https://minio.example.net/calls"))
    answer = review_response({"apiVersion": "admission.k8s.io/v1", "request": bad})
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == bad["uid"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 422
    assert response["status"]["message"] == decide(bad).message
    ok = review_response({"request": request(setting())})["response"]
    assert ok == {"uid": bad["uid"], "allowed": True}


@pytest.mark.parametrize(
    "review",
    [
        pytest.param({"request": "not an object"}, id="request-string"),
        pytest.param(
            {"request": {"kind": "VoiceStorageSetting", "operation": "CREATE"}}, id="kind"
        ),
        pytest.param(
            {
                "request": {
                    "kind": {"kind": "VoiceStorageSetting"},
                    "operation": "CREATE",
                    "object": ["a", "list"],
                }
            },
            id="object-list",
        ),
        pytest.param(
            {
                "request": {
                    "kind": {"kind": "AwsCredential"},
                    "operation": "UPDATE",
                    "object": {"metadata": "x", "spec": {"secretRef": 7}},
                    "oldObject": 3,
                }
            },
            id="spec-wrong-types",
        ),
    ],
)
def test_hostile_reviews_get_an_answer_not_a_crash(review: dict[str, Any]) -> None:
    answer = review_response(review)
    assert answer["kind"] == "AdmissionReview"
    assert isinstance(answer["response"]["allowed"], bool)
    summary(review)  # what the server logs and counts works on it too


def test_summary_bounds_the_kind_label() -> None:
    req = request(setting())
    assert summary({"request": req}) == {
        "kind": "VoiceStorageSetting",
        "namespace": NS,
        "object": "default",
        "operation": "CREATE",
    }
    assert summary({"request": {"kind": {"kind": "x" * 500}}})["kind"] == "other"


# --- the mutating route: a Recording's finalizer at its create ---------------------------


def recording_create(metadata: Any, operation: str = "CREATE", kind: str = "Recording") -> Any:
    obj = {"apiVersion": "voicevault.io/v1alpha1", "kind": kind, "metadata": metadata}
    return {
        "uid": "u-rec",
        "kind": {"group": "voicevault.io", "version": "v1alpha1", "kind": kind},
        "namespace": NS,
        "name": "call-1",
        "operation": operation,
        "object": obj,
    }


def patched(request: dict[str, Any]) -> dict[str, Any]:
    """The object as the API server would have it after the webhook's answer."""
    response = mutation_response({"request": request})["response"]
    assert response["allowed"] is True and response["uid"] == request["uid"]
    if "patch" not in response:
        assert "patchType" not in response
        return dict(request["object"])
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    result: dict[str, Any] = jsonpatch.apply_patch(request["object"], ops)
    return result


@pytest.mark.parametrize(
    ("finalizers", "expected"),
    [
        pytest.param(None, [FINALIZER], id="absent"),
        pytest.param([], [FINALIZER], id="empty"),
        pytest.param(["example.com/hold"], ["example.com/hold", FINALIZER], id="another"),
        pytest.param([FINALIZER], [FINALIZER], id="already-there"),
        pytest.param(["example.com/hold", FINALIZER], ["example.com/hold", FINALIZER], id="kept"),
    ],
)
def test_a_recordings_create_gets_the_finalizer_once(
    finalizers: list[str] | None, expected: list[str]
) -> None:
    metadata: dict[str, Any] = {"name": "call-1", "namespace": NS}
    if finalizers is not None:
        metadata["finalizers"] = finalizers
    obj = patched(recording_create(metadata))
    assert obj["metadata"]["finalizers"] == expected
    assert obj["metadata"]["name"] == "call-1", "nothing else changes"


def test_a_null_finalizers_field_is_replaced() -> None:
    obj = patched(recording_create({"name": "call-1", "finalizers": None}))
    assert obj["metadata"]["finalizers"] == [FINALIZER]


def test_the_finalizer_needs_no_patch_when_it_is_there() -> None:
    response = mutation_response({"request": recording_create({"finalizers": [FINALIZER]})})
    assert response["response"] == {"uid": "u-rec", "allowed": True}


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(recording_create({"name": "x"}, operation="UPDATE"), id="update"),
        pytest.param(recording_create({"name": "x"}, operation="DELETE"), id="delete"),
        pytest.param(recording_create({"name": "x"}, kind="VoiceStorageSetting"), id="setting"),
        pytest.param(recording_create("not-an-object"), id="metadata-a-string"),
        pytest.param(recording_create({"finalizers": "x"}), id="finalizers-a-string"),
        pytest.param({"kind": "Recording", "operation": "CREATE"}, id="kind-a-string"),
        pytest.param({"kind": {"kind": "Recording"}, "operation": "CREATE"}, id="no-object"),
        pytest.param({}, id="empty"),
    ],
)
def test_anything_else_is_allowed_untouched(request_: dict[str, Any]) -> None:
    assert finalizer_patch(request_) == []
    response = mutation_response({"request": request_})["response"]
    assert response["allowed"] is True
    assert "patch" not in response


@pytest.mark.parametrize("review", [{}, {"request": 7}, {"request": []}, {"request": {"uid": 3}}])
def test_the_mutating_route_never_refuses_hostile_reviews(review: dict[str, Any]) -> None:
    answer = mutation_response(review)
    assert answer["kind"] == "AdmissionReview"
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["response"]["allowed"] is True


def test_each_path_has_its_answer_and_recordings_are_counted_by_kind() -> None:
    assert {"/validate": review_response, "/mutate": mutation_response} == ROUTES
    assert summary({"request": recording_create({"name": "call-1"})})["kind"] == "Recording"
