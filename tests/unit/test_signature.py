"""X-Twilio-Signature: Twilio's published example and the ways a signature must fail."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from voicevault.operator.signature import (
    SIGNATURE_HEADER,
    twilio_signature,
    verify_twilio_signature,
)

# The worked example from Twilio's "Webhooks security" documentation page.
DOC_TOKEN = "12345"
DOC_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
DOC_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+12349013030",
    "Digits": "1234",
    "From": "+12349013030",
    "To": "+18005551212",
}
DOC_SIGNATURE = "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


def test_twilio_documented_example() -> None:
    assert twilio_signature(DOC_TOKEN, DOC_URL, DOC_PARAMS) == DOC_SIGNATURE
    assert verify_twilio_signature(DOC_TOKEN, DOC_URL, DOC_PARAMS, DOC_SIGNATURE)


def test_parameter_order_does_not_matter() -> None:
    reversed_params = dict(reversed(list(DOC_PARAMS.items())))
    assert twilio_signature(DOC_TOKEN, DOC_URL, reversed_params) == DOC_SIGNATURE


def test_any_change_breaks_the_signature() -> None:
    assert not verify_twilio_signature(
        DOC_TOKEN, DOC_URL, DOC_PARAMS | {"Digits": "9999"}, DOC_SIGNATURE
    )
    assert not verify_twilio_signature(
        DOC_TOKEN, DOC_URL, DOC_PARAMS | {"Extra": ""}, DOC_SIGNATURE
    )
    assert not verify_twilio_signature(
        DOC_TOKEN, DOC_URL.replace("bar=2", "bar=3"), DOC_PARAMS, DOC_SIGNATURE
    )
    assert not verify_twilio_signature("54321", DOC_URL, DOC_PARAMS, DOC_SIGNATURE)


def test_malformed_signatures_are_false_not_errors() -> None:
    for candidate in ("", DOC_SIGNATURE[:-1], DOC_SIGNATURE + "=", "\u00e9" * 28, "\udce9"):
        assert not verify_twilio_signature(DOC_TOKEN, DOC_URL, DOC_PARAMS, candidate)


def test_no_params_signs_the_url_alone() -> None:
    assert twilio_signature("key", "https://x.test/cb", {}) == twilio_signature(
        "key", "https://x.test/cb", {}
    )
    assert twilio_signature("key", "https://x.test/cb", {}) != twilio_signature(
        "key", "https://x.test/cb2", {}
    )


def test_header_name() -> None:
    assert SIGNATURE_HEADER == "X-Twilio-Signature"


@given(
    st.text(min_size=1),
    st.text(),
    st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=6),
)
def test_signatures_verify_and_are_base64_sha1(key: str, url: str, params: dict[str, str]) -> None:
    signature = twilio_signature(key, url, params)
    assert len(signature) == 28
    assert signature.endswith("=")
    assert verify_twilio_signature(key, url, params, signature)
