"""The webhook's HTTPS server on loopback: AdmissionReview in and out, certificate swaps."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from prometheus_client import REGISTRY

from voicevault.crds.recording import FINALIZER
from voicevault.operator import webhookcert
from voicevault.operator.webhook import AdmissionServer, ReloadingContext

POLICY = webhookcert.CertPolicy(hosts=("127.0.0.1",))


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[AdmissionServer, ReloadingContext, Path]]:
    first = webhookcert.plan(None, POLICY, datetime.now(UTC))
    tls = ReloadingContext()
    tls.load(first.data[webhookcert.TLS_CERT], first.data[webhookcert.TLS_KEY])
    ca = tmp_path / "ca.crt"
    ca.write_bytes(first.data[webhookcert.CA_CERT])
    server = AdmissionServer(("127.0.0.1", 0), tls)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, tls, ca
    server.shutdown()
    server.server_close()


def _post(
    server: AdmissionServer, ca: Path, body: bytes, path: str = "/validate"
) -> tuple[int, dict[str, Any]]:
    context = ssl.create_default_context(cafile=str(ca))  # verifies the IP SAN too
    conn = http.client.HTTPSConnection(
        "127.0.0.1", server.server_address[1], context=context, timeout=10
    )
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def _served_cert(server: AdmissionServer) -> x509.Certificate:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=5) as raw,
        context.wrap_socket(raw) as tls,  # no server_hostname: no SNI, as for an IP URL
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _review(uid: str, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    """An AdmissionReview of a CREATE in namespace acme."""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "voicevault.io", "version": "v1alpha1", "kind": kind},
            "namespace": "acme",
            "operation": "CREATE",
            "object": obj,
        },
    }


def test_an_admission_review_is_answered(
    served: tuple[AdmissionServer, ReloadingContext, Path],
) -> None:
    server, _, ca = served
    review = _review(
        "u-1", "AwsCredential", {"spec": {"secretRef": {"name": "k", "namespace": "other"}}}
    )
    status, answer = _post(server, ca, json.dumps(review).encode())
    assert status == 200
    assert answer["response"]["uid"] == "u-1"
    assert answer["response"]["allowed"] is False
    assert "secretRef.namespace 'other'" in answer["response"]["status"]["message"]


def test_a_recordings_create_gets_its_finalizer_patch_on_the_mutating_path(
    served: tuple[AdmissionServer, ReloadingContext, Path],
) -> None:
    server, _, ca = served
    review = _review("u-2", "Recording", {"metadata": {"name": "call-1"}, "spec": {}})
    labels = {"kind": "Recording", "allowed": "true"}
    before = REGISTRY.get_sample_value("voicevault_webhook_reviews_total", labels) or 0.0
    status, answer = _post(server, ca, json.dumps(review).encode(), "/mutate")
    assert status == 200
    response = answer["response"]
    assert (response["uid"], response["allowed"], response["patchType"]) == (
        "u-2",
        True,
        "JSONPatch",
    )
    assert json.loads(base64.b64decode(response["patch"])) == [
        {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}
    ]
    assert REGISTRY.get_sample_value("voicevault_webhook_reviews_total", labels) == before + 1
    # the same review on the validating path is no Recording's business there: no patch
    status, answer = _post(server, ca, json.dumps(review).encode(), "/validate")
    assert (status, answer["response"]) == (200, {"uid": "u-2", "allowed": True})


@pytest.mark.parametrize(
    ("body", "path", "code"),
    [
        pytest.param(b"{not json", "/validate", 400, id="not-json"),
        pytest.param(b"[1, 2]", "/validate", 400, id="not-an-object"),
        pytest.param(b"{}", "/mutate-all", 404, id="wrong-path"),
    ],
)
def test_garbage_gets_an_http_error_not_a_crash(
    served: tuple[AdmissionServer, ReloadingContext, Path], body: bytes, path: str, code: int
) -> None:
    server, _, ca = served
    status, _ = _post(server, ca, body, path)
    assert status == code
    status, answer = _post(server, ca, b'{"request": {"uid": "after"}}')
    assert (status, answer["response"]["allowed"]) == (200, True), "the server still serves"


def test_a_new_certificate_is_served_from_the_next_connection(
    served: tuple[AdmissionServer, ReloadingContext, Path],
) -> None:
    server, tls, _ = served
    before = _served_cert(server)
    renewed = webhookcert.plan(None, POLICY, datetime.now(UTC))
    tls.load(renewed.data[webhookcert.TLS_CERT], renewed.data[webhookcert.TLS_KEY])
    after = _served_cert(server)
    assert after != before
    assert after == x509.load_pem_x509_certificate(renewed.data[webhookcert.TLS_CERT])


def test_connection_slots_are_given_back(tmp_path: Path) -> None:
    """One slot: every request, and a client that connected and left, gives it back."""
    issued = webhookcert.plan(None, POLICY, datetime.now(UTC))
    tls = ReloadingContext()
    tls.load(issued.data[webhookcert.TLS_CERT], issued.data[webhookcert.TLS_KEY])
    ca = tmp_path / "ca.crt"
    ca.write_bytes(issued.data[webhookcert.CA_CERT])
    server = AdmissionServer(("127.0.0.1", 0), tls, max_connections=1)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for _ in range(3):
            assert _post(server, ca, b'{"request": {}}')[0] == 200
        idle = socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=5)
        idle.close()  # no handshake at all
        assert _post(server, ca, b"{}")[0] == 200
        assert _post(server, ca, b"{broken", "/validate")[0] == 400
        assert _post(server, ca, b"{}")[0] == 200
    finally:
        server.shutdown()
        server.server_close()
