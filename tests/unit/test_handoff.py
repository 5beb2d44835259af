"""The request for more work and its answer, as both ends read them (#19)."""

from __future__ import annotations

import hashlib
import ssl
from datetime import UTC, datetime

import pytest

from tests.support.samples import batch_item
from voicevault.contract import (
    BatchFileError,
    BatchOutcome,
    BatchSpec,
    HandoffFile,
    ItemResult,
    MoreRequest,
)
from voicevault.operator import webhookcert
from voicevault.operator.handoff import fingerprint, resolve_url

ANY = "0.0.0.0"  # noqa: S104 - an operator's bind address in a pod, never bound here


@pytest.mark.parametrize(
    ("configured", "bind", "pod_ip", "expected"),
    [
        ("", ANY, "10.88.0.7", "https://10.88.0.7:9443"),
        ("", ANY, "fd00::7", "https://[fd00::7]:9443"),
        ("", "127.0.0.1", None, "https://127.0.0.1:9443"),
        ("", ANY, None, None),  # nowhere a pod could be told to go
        ("", "::", None, None),
        ("off", "127.0.0.1", "10.88.0.7", None),
        ("https://operator.example:8443", ANY, "10.88.0.7", "https://operator.example:8443"),
    ],
)
def test_the_url_pods_are_given(
    configured: str, bind: str, pod_ip: str | None, expected: str | None
) -> None:
    assert resolve_url(configured, bind, 9443, pod_ip) == expected


def test_the_fingerprint_is_that_of_the_certificate_a_client_is_shown() -> None:
    pair = webhookcert.plan(None, webhookcert.CertPolicy(hosts=("127.0.0.1",)), datetime.now(UTC))
    leaf = pair.data[webhookcert.TLS_CERT]
    der = ssl.PEM_cert_to_DER_cert(
        leaf.decode().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    )
    assert fingerprint(leaf) == hashlib.sha256(der).hexdigest()
    # a chain: the first certificate is the one served
    chained = leaf + pair.data[webhookcert.CA_CERT]
    assert fingerprint(chained) == fingerprint(leaf)
    assert fingerprint(b"not a certificate") == ""


def test_a_request_carries_results_a_termination_message_could_not_hold() -> None:
    results: list[ItemResult | None] = [
        ItemResult(kind="transient", error_code=16111, message=f"{i:03d} " + "x" * 140)
        for i in range(400)
    ]
    outcome = BatchOutcome(results=results, parts_resent=3, chunk=2)
    assert BatchOutcome.decode(outcome.encode()) != outcome  # 4 KiB: messages dropped
    back = MoreRequest.from_json(MoreRequest(pod="p", chunk=2, outcome=outcome).to_json())
    assert back.pod == "p" and back.chunk == 2
    assert back.outcome == outcome


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"[]",
        b'{"pod":"p","chunk":"1","outcome":"{}"}',
        b'{"pod":"p","chunk":1}',
        b'{"pod":"p","chunk":true,"outcome":"{\\"v\\":1}"}',
        b'{"chunk":1,"outcome":"{\\"v\\":1}"}',
    ],
)
def test_a_request_that_is_not_one_is_refused_by_name(text: bytes) -> None:
    with pytest.raises(BatchFileError, match="request for more work"):
        MoreRequest.from_json(text)


def test_the_chunk_rides_in_the_termination_message_and_an_old_one_reads_as_the_first() -> None:
    outcome = BatchOutcome(results=[ItemResult(kind="completed")], chunk=7)
    assert '"n":7' in outcome.encode()
    assert BatchOutcome.decode(outcome.encode()) == outcome
    first = BatchOutcome(results=[ItemResult(kind="completed")])
    assert '"n"' not in first.encode()  # what an older operator reads
    assert BatchOutcome.decode('{"v":1,"r":["C"],"m":[],"p":0}') == first
    # the shortest form still says which batch it is of
    assert BatchOutcome.decode(outcome.encode(limit=10)) == BatchOutcome(chunk=7)


def test_a_batch_says_which_it_is_and_defaults_to_the_first() -> None:
    spec = BatchSpec(pod="p", node="n", items=[batch_item()], chunk=3)
    assert BatchSpec.from_json(spec.to_json()) == spec
    assert BatchSpec.from_json('{"pod":"p","node":"n","items":[]}').chunk == 0


def test_the_handoff_file_hides_its_token_and_names_what_is_missing() -> None:
    handoff = HandoffFile(url="https://127.0.0.1:1", fingerprint="ab", token="tok-SECRET")
    assert "SECRET" not in repr(handoff) and "SECRET" not in str(handoff)
    assert HandoffFile.from_json(handoff.to_json()) == handoff
    with pytest.raises(BatchFileError) as caught:
        HandoffFile.from_json('{"url":"https://x","fingerprint":"ab","token":7}')
    assert caught.value.field_name == "token"
