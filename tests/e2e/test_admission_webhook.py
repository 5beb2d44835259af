"""The admission webhooks through a real API server and the real `kubectl apply`.

A stack of its own (as `make up` runs it): the operator serves the webhooks on loopback,
the Validating- and MutatingWebhookConfiguration are the chart's, with a URL client
config, and the operator issues its certificate and patches both caBundles itself.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from kubernetes import client as k8s

from tests.bed.controlplane import ControlPlane
from tests.bed.s3_moto import MotoS3
from tests.bed.stack import RELEASE, SYSTEM_NAMESPACE, Stack, recording_spec
from tests.support.keys import key_pair
from tests.support.kube import as_dict, kubectl, wait_for
from voicevault import API_GROUP, API_VERSION
from voicevault.crds.recording import FINALIZER
from voicevault.operator import webhookcert
from voicevault.uploader import envelope
from voicevault.uploader.bucketurl import BucketUrlError, parse_bucket_url

pytestmark = [pytest.mark.kube, pytest.mark.s3, pytest.mark.slow]

SETTING_HOOK = 'admission webhook "voicestoragesettings.voicevault.io" denied the request'
CREDENTIAL_HOOK = 'admission webhook "awscredentials.voicevault.io" denied the request'
CERT_SECRET = f"{RELEASE}-webhook-cert"


@pytest.fixture(scope="module")
def hooked(moto_s3: MotoS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with ControlPlane(tmp_path_factory.mktemp("webhook-controlplane")) as plane:
        stack = Stack(plane, moto_s3, tmp_path_factory.mktemp("webhook-stack"), webhook=True)
        stack.start()
        try:
            yield stack
        finally:
            stack.stop()


@pytest.fixture
def live(hooked: Stack) -> Stack:
    if not hooked.operator.alive:
        hooked.operator.start()
        hooked.wait_webhook()
    return hooked


def apply(stack: Stack, *docs: dict[str, Any]) -> Any:
    text = yaml.safe_dump_all(
        [{"apiVersion": f"{API_GROUP}/{API_VERSION}", **doc} for doc in docs], sort_keys=False
    )
    return kubectl(stack.cp.admin_kubeconfig, "apply", "-f", "-", input_text=text, check=False)


def fresh_namespace(stack: Stack) -> str:
    name = f"wh-{uuid.uuid4().hex[:8]}"
    stack.core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    return name


def setting(namespace: str, storage: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "kind": "VoiceStorageSetting",
        "metadata": {"name": "default", "namespace": namespace},
        "spec": {"externalStorage": {"credentialRef": {"name": "writer"}, **storage}, **spec},
    }


def credential(namespace: str, /, **ref: Any) -> dict[str, Any]:
    return {
        "kind": "AwsCredential",
        "metadata": {"name": "writer", "namespace": namespace},
        "spec": {"secretRef": {"name": "writer-keys", **ref}},
    }


AWS_URL = "https://calls-acme.s3.eu-west-1.amazonaws.com/recordings"
GARBAGE_PEM = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"

BAD_SETTINGS = [
    pytest.param(
        {"bucketUrl": "https://minio.example.net/calls"},
        {},
        ["spec.externalStorage.bucketUrl 'https://minio.example.net/calls': "],
        id="non-aws-host-without-endpoint",
    ),
    pytest.param(
        {"bucketUrl": "https://calls.s3.amazonaws.com/a//b"},
        {},
        ["spec.externalStorage.bucketUrl 'https://calls.s3.amazonaws.com/a//b': "],
        id="double-slash",
    ),
    pytest.param(
        {"bucketUrl": "https://My_Bucket.s3.amazonaws.com/x"},
        {},
        ["spec.externalStorage.bucketUrl 'https://My_Bucket.s3.amazonaws.com/x': "],
        id="uppercase-underscore-bucket",
    ),
    pytest.param(
        {"bucketUrl": AWS_URL},
        {"encryption": {"publicKey": key_pair(1024).public_pem.decode()}},
        ["spec.encryption.publicKey", "1024"],
        id="rsa-1024",
    ),
    pytest.param(
        {"bucketUrl": AWS_URL},
        {"encryption": {"publicKey": GARBAGE_PEM}},
        ["spec.encryption.publicKey"],
        id="garbage-pem",
    ),
    pytest.param(
        {"bucketUrl": AWS_URL},
        {"retry": {"initialBackoffSeconds": 300, "maxBackoffSeconds": 60}},
        ["spec.retry: maxBackoffSeconds 60 must be at least initialBackoffSeconds 300"],
        id="retry-bounds",
    ),
]


def _parser_says(storage: dict[str, Any], spec: dict[str, Any]) -> str | None:
    """What the operator's own parsers say about it: the refusal must carry exactly that."""
    try:
        parse_bucket_url(storage["bucketUrl"])
        if "encryption" in spec:
            envelope.load_public_key(spec["encryption"]["publicKey"])
    except (BucketUrlError, envelope.InvalidPublicKey) as exc:
        return str(exc)
    return None


@pytest.mark.parametrize(("storage", "spec", "said"), BAD_SETTINGS)
def test_kubectl_apply_refuses_a_bad_setting_with_the_parsers_message(
    live: Stack, storage: dict[str, Any], spec: dict[str, Any], said: list[str]
) -> None:
    namespace = fresh_namespace(live)
    out = apply(live, setting(namespace, storage, **spec))
    assert out.returncode != 0
    assert SETTING_HOOK in out.stderr, out.stderr
    for text in said:
        assert text in out.stderr, out.stderr
    own = _parser_says(storage, spec)
    assert own is None or own in out.stderr, (own, out.stderr)
    stored = as_dict(
        live.custom.list_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, "voicestoragesettings"
        )
    )
    assert stored["items"] == [], "nothing was stored"


@pytest.mark.parametrize(
    ("ref", "said"),
    [
        pytest.param(
            {"namespace": "victim"},
            "spec.secretRef.namespace 'victim': a credential may only use a Secret in its own",
            id="cross-namespace",
        ),
        pytest.param(
            {"accessKeyIdKey": "key", "secretAccessKeyKey": "key"},
            "spec.secretRef.secretAccessKeyKey 'key' is also accessKeyIdKey",
            id="same-key-twice",
        ),
    ],
)
def test_kubectl_apply_refuses_a_bad_secret_reference(
    live: Stack, ref: dict[str, Any], said: str
) -> None:
    namespace = fresh_namespace(live)
    out = apply(live, credential(namespace, **ref))
    assert out.returncode != 0
    assert CREDENTIAL_HOOK in out.stderr, out.stderr
    assert said in out.stderr, out.stderr


def test_good_ones_are_accepted_and_work(live: Stack) -> None:
    namespace = fresh_namespace(live)
    pem = key_pair().public_pem.decode()
    out = apply(
        live,
        credential(namespace, sessionTokenKey="AWS_SESSION_TOKEN"),
        setting(
            namespace,
            {"bucketUrl": AWS_URL},
            encryption={"publicKey": pem},
            retry={"initialBackoffSeconds": 60, "maxBackoffSeconds": 60},
        ),
    )
    assert out.returncode == 0, out.stderr
    assert "voicestoragesetting.voicevault.io/default created" in out.stdout
    # a later edit is judged too, and a metadata-only one is let through
    relabel = kubectl(
        live.cp.admin_kubeconfig, "label", "-n", namespace, "vss", "default", "team=a"
    )
    assert relabel.returncode == 0
    bad = apply(live, setting(namespace, {"bucketUrl": "https://minio.example.net/x"}))
    assert SETTING_HOOK in bad.stderr
    # and the whole loop works through it
    account = live.add_account(encrypted=True)
    live.record(account, "call-1", b"RIFF" + b"\0" * 4000)
    live.wait_phase(account.namespace, "call-1", "Completed")


def _configuration(stack: Stack, kind: str = "validatingwebhookconfiguration") -> dict[str, Any]:
    out = kubectl(stack.cp.admin_kubeconfig, "get", kind, RELEASE, "-o", "json")
    config: dict[str, Any] = json.loads(out.stdout)
    return config


def _secret_data(stack: Stack) -> dict[str, bytes]:
    secret = stack.core.read_namespaced_secret(CERT_SECRET, SYSTEM_NAMESPACE)
    assert secret.type == "kubernetes.io/tls"
    return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}


def _served_cert(stack: Stack) -> x509.Certificate:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", stack.operator.webhook_port), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_the_operator_patches_the_ca_bundles_and_recordings_are_never_refused(
    live: Stack,
) -> None:
    config = _configuration(live)
    data = _secret_data(live)
    hooks = config["webhooks"]
    assert {h["name"] for h in hooks} == {
        "voicestoragesettings.voicevault.io",
        "awscredentials.voicevault.io",
    }
    for hook in hooks:
        assert base64.b64decode(hook["clientConfig"]["caBundle"]) == data[webhookcert.CA_CERT]
        assert hook["clientConfig"]["url"] == f"{live.operator.webhook_url}/validate"
        assert hook["failurePolicy"] == "Fail"
        resources = {r for rule in hook["rules"] for r in rule["resources"]}
        assert "recordings" not in resources and "*" not in resources
    # recordings: only their create, only to add the finalizer, never refused
    (mutating,) = _configuration(live, "mutatingwebhookconfiguration")["webhooks"]
    assert base64.b64decode(mutating["clientConfig"]["caBundle"]) == data[webhookcert.CA_CERT]
    assert mutating["clientConfig"]["url"] == f"{live.operator.webhook_url}/mutate"
    assert (mutating["failurePolicy"], mutating["timeoutSeconds"]) == ("Ignore", 2)
    assert [(r["resources"], r["operations"]) for r in mutating["rules"]] == [
        (["recordings"], ["CREATE"])
    ]
    # what it serves is the Secret's certificate, and the caBundle verifies it
    served = _served_cert(live)
    assert served == x509.load_pem_x509_certificate(data[webhookcert.TLS_CERT])
    (ca,) = x509.load_pem_x509_certificates(data[webhookcert.CA_CERT])
    served.verify_directly_issued_by(ca)


def test_while_the_webhook_is_down_recordings_are_created_and_settings_refused(
    live: Stack,
) -> None:
    account = live.add_account()
    namespace = fresh_namespace(live)
    live.operator.kill()
    try:
        # the recording service must never be blocked: the recording webhook's port is
        # closed, and it is called with failurePolicy Ignore
        live.put_media(live.nodes[0], account.namespace, "2026/11/down.wav", b"RIFF" * 500)
        out = apply(
            live,
            {
                "kind": "Recording",
                "metadata": {"name": "down", "namespace": account.namespace},
                "spec": recording_spec(live.nodes[0], "2026/11/down.wav", duration=3),
            },
        )
        assert out.returncode == 0, out.stderr
        assert "recording.voicevault.io/down created" in out.stdout
        admitted = live.get(account.namespace, "recordings", "down")
        assert "finalizers" not in admitted["metadata"], "created without the webhook's help"
        # a setting, even a good one, is refused: failurePolicy Fail
        refused = apply(live, setting(namespace, {"bucketUrl": AWS_URL}))
        assert refused.returncode != 0
        assert 'failed calling webhook "voicestoragesettings.voicevault.io"' in refused.stderr
        refused = apply(live, credential(namespace))
        assert 'failed calling webhook "awscredentials.voicevault.io"' in refused.stderr
    finally:
        live.operator.start()
        live.wait_webhook()
    done = live.wait_phase(account.namespace, "down", "Completed")
    assert done["metadata"]["finalizers"] == [FINALIZER], "the operator added it itself"
    assert apply(live, setting(namespace, {"bucketUrl": AWS_URL})).returncode == 0


def _dry_run_recording(stack: Stack, namespace: str) -> dict[str, Any]:
    """A Recording's create as the API server would store it (nothing is stored)."""
    body = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "Recording",
        "metadata": {"name": "probe"},
        "spec": recording_spec(stack.nodes[0], "2026/11/probe.wav"),
    }
    return as_dict(
        stack.custom.create_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, "recordings", body, dry_run="All"
        )
    )


def _near_expiry(data: dict[str, bytes], hosts: tuple[str, ...]) -> dict[str, bytes]:
    """The same CA, a serving certificate with one hour left (issued for one more host)."""
    policy = webhookcert.CertPolicy(
        hosts=(*hosts, "rotation.invalid"),
        cert_validity=timedelta(hours=1),
        renew_before=timedelta(0),
    )
    injected = webhookcert.plan(data, policy, datetime.now(UTC))
    assert injected.changed and injected.data[webhookcert.CA_CERT] == data[webhookcert.CA_CERT]
    return injected.data


def test_a_near_expiry_certificate_is_replaced_and_the_api_server_keeps_calling(
    live: Stack, tmp_path: Path
) -> None:
    before = _secret_data(live)
    hosts = (*webhookcert.service_hosts(RELEASE, SYSTEM_NAMESPACE), "127.0.0.1")
    injected = _near_expiry(before, hosts)
    secret = live.core.read_namespaced_secret(CERT_SECRET, SYSTEM_NAMESPACE)
    secret.data = {k: base64.b64encode(v).decode() for k, v in injected.items()}
    live.core.replace_namespaced_secret(CERT_SECRET, SYSTEM_NAMESPACE, secret)
    short = x509.load_pem_x509_certificate(injected[webhookcert.TLS_CERT])
    namespace = fresh_namespace(live)
    answers: list[str] = []

    def renewed() -> x509.Certificate | None:
        # the API server is calling all along: each probe is judged, none fails to connect
        probe = apply(live, setting(namespace, {"bucketUrl": "https://minio.example.net/x"}))
        answers.append(probe.stderr)
        current = x509.load_pem_x509_certificate(_secret_data(live)[webhookcert.TLS_CERT])
        if current.not_valid_after_utc <= short.not_valid_after_utc:
            return None
        served = _served_cert(live)
        return served if served == current else None

    served = wait_for(renewed, timeout=30, interval=0.5, what="the certificate to be renewed")
    assert served.not_valid_after_utc > datetime.now(UTC) + timedelta(days=300)
    assert all(SETTING_HOOK in a for a in answers), [a for a in answers if SETTING_HOOK not in a]
    after = _secret_data(live)
    assert after[webhookcert.CA_CERT] == before[webhookcert.CA_CERT], "same CA, same caBundle"
    for hook in _configuration(live)["webhooks"]:
        assert base64.b64decode(hook["clientConfig"]["caBundle"]) == after[webhookcert.CA_CERT]
    assert "webhook certificate renewed" in live.operator.log()
    good = apply(live, setting(namespace, {"bucketUrl": AWS_URL}))
    assert good.returncode == 0, good.stderr


def test_a_deleted_certificate_secret_is_restored_with_the_same_ca(live: Stack) -> None:
    before = _secret_data(live)
    live.core.delete_namespaced_secret(CERT_SECRET, SYSTEM_NAMESPACE)

    def restored() -> dict[str, bytes] | None:
        try:
            return _secret_data(live)
        except k8s.ApiException as exc:
            if exc.status != 404:
                raise
            return None

    after = wait_for(restored, timeout=30, what="the certificate Secret to be restored")
    assert after == before, "the CA the API server trusts, and the certificate in use"
    namespace = fresh_namespace(live)
    out = apply(live, setting(namespace, {"bucketUrl": "https://minio.example.net/x"}))
    assert SETTING_HOOK in out.stderr, out.stderr


def test_a_ca_near_its_end_is_rotated_without_a_failed_call(live: Stack) -> None:
    """Trust both, then serve from the new CA: the API server never sees an unknown one.

    Set up while the operator is down: a CA `X` with ten days left (under the 30 days
    of renewal) in the Secret, and trusted by the configuration beside the one in use.
    """
    hosts = (*webhookcert.service_hosts(RELEASE, SYSTEM_NAMESPACE), "127.0.0.1")
    short = webhookcert.CertPolicy(
        hosts=hosts, ca_validity=timedelta(days=10), cert_validity=timedelta(days=10)
    )
    ending = webhookcert.plan(None, short, datetime.now(UTC)).data
    (ca_x,) = x509.load_pem_x509_certificates(ending[webhookcert.CA_CERT])
    in_use = _secret_data(live)[webhookcert.CA_CERT]
    admission_api = k8s.AdmissionregistrationV1Api(live.api)
    extra = list(live.operator.extra_args)
    live.operator.kill()
    try:
        trusted = base64.b64encode(ending[webhookcert.CA_CERT] + in_use).decode()
        for kind, patch in (
            (
                "validatingwebhookconfiguration",
                admission_api.patch_validating_webhook_configuration,
            ),
            ("mutatingwebhookconfiguration", admission_api.patch_mutating_webhook_configuration),
        ):
            hooks = _configuration(live, kind)["webhooks"]
            patch(
                RELEASE,
                {
                    "webhooks": [
                        {"name": h["name"], "clientConfig": {"caBundle": trusted}} for h in hooks
                    ]
                },
            )
        secret = live.core.read_namespaced_secret(CERT_SECRET, SYSTEM_NAMESPACE)
        secret.data = {k: base64.b64encode(v).decode() for k, v in ending.items()}
        live.core.replace_namespaced_secret(CERT_SECRET, SYSTEM_NAMESPACE, secret)
        # a slower second step, so that the probes below watch it happen
        live.operator.extra_args = [*extra, "--webhook-cert-check-interval=4"]
        live.operator.start()
        namespace = fresh_namespace(live)
        answers: list[str] = []

        def rotated() -> bool:
            probe = apply(live, setting(namespace, {"bucketUrl": "https://minio.example.net/x"}))
            answers.append(probe.stderr)
            bundle = x509.load_pem_x509_certificates(_secret_data(live)[webhookcert.CA_CERT])
            if len(bundle) != 2 or bundle[0] == ca_x or bundle[1] != ca_x:
                return False
            try:
                _served_cert(live).verify_directly_issued_by(bundle[0])
            except Exception:
                return False
            return True

        wait_for(rotated, timeout=40, interval=0.3, what="the CA to be rotated")
        assert all(SETTING_HOOK in a for a in answers), [
            a for a in answers if SETTING_HOOK not in a
        ]
        # the recording webhook trusts the new CA too: a create is still given the finalizer
        final = _secret_data(live)[webhookcert.CA_CERT]
        for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
            for hook in _configuration(live, kind)["webhooks"]:
                assert base64.b64decode(hook["clientConfig"]["caBundle"]) == final, kind
        assert _dry_run_recording(live, namespace)["metadata"]["finalizers"] == [FINALIZER]
        log = live.operator.log()
        assert "a new CA, trusted beside it" in log
        assert "not signed by the current CA" in log
    finally:
        live.operator.kill()
        live.operator.extra_args = extra
        live.operator.start()
        live.wait_webhook()
