"""Hostile input for the envelope: arbitrary encryption details, cut and tampered
objects, and private keys that are wrong, not keys, or garbage.

tests/unit/test_envelope.py covers the known vectors and a list of specific bad inputs;
these are the property-based versions: whatever comes in, the only exception is
`DecryptionError`, its message is one short line, and it never echoes key material.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import functools
import io
import re
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa, x25519
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from voicevault.uploader.envelope import (
    IV_SIZE,
    TAG_SIZE,
    ContentKey,
    DecryptionError,
    EncryptionDetails,
    StreamEncryptor,
    decrypt_stream,
    new_content_key,
    open_content_key,
    seal_content_key,
)

FIELDS = {
    "type": ("type",),
    "sid": ("publicKeySid", "public_key_sid"),
    "cek": ("encryptedCek", "encrypted_cek"),
    "iv": ("iv",),
}
KNOWN_KEYS = [name for names in FIELDS.values() for name in names]
SID_RE = re.compile(r"CR[0-9a-fA-F]{32}")
# an error message that quotes a key, a wrapped key or an object would contain a long
# run of base64 or hex characters; the real messages are plain English
LONG_B64_RUN = re.compile(r"[A-Za-z0-9+/=]{24,}")
MAX_MESSAGE = 300

# loading an RSA private key costs ~50 ms (its consistency check), so the properties
# that load one per example run fewer examples
RSA_BOUND = settings(max_examples=40, deadline=None)
HOSTILE = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _assert_one_short_line(exc: BaseException) -> str:
    message = str(exc)
    assert message, "an error message must say something"
    assert "\n" not in message and "\r" not in message, message
    assert len(message) <= MAX_MESSAGE, f"message echoes its input: {message[:120]}..."
    return message


# --- keys (module-level caches: key generation is slow) ----------------------------


@functools.cache
def _rsa(bits: int = 2048, which: int = 0) -> rsa.RSAPrivateKey:
    del which  # only part of the cache key: two different keys of the same size
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _pem(key: Any, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    pem: bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    return pem


def _public_pem(key: Any) -> bytes:
    pem: bytes = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem


@functools.cache
def _sealed(plain: bytes = b"hostile " * 40) -> tuple[ContentKey, EncryptionDetails, bytes]:
    content_key = new_content_key()
    details = seal_content_key(_rsa().public_key(), content_key)
    return content_key, details, _encrypt(content_key, plain)


def _encrypt(content_key: ContentKey, data: bytes) -> bytes:
    encryptor = StreamEncryptor(content_key)
    return encryptor.update(data) + encryptor.finalize()


def _decrypt(content_key: ContentKey, blob: bytes, declared: int, chunk_size: int) -> bytes:
    out = io.BytesIO()
    decrypt_stream(content_key, io.BytesIO(blob), out, declared, chunk_size)
    return out.getvalue()


# --- EncryptionDetails.from_mapping on anything -------------------------------------

_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# Plausible values: right, almost right (one character off, padding games, whitespace,
# URL-safe alphabet, wrong lengths), or huge.
sids = st.one_of(
    st.just("CR" + "0123456789abcdef" * 2),
    st.from_regex(SID_RE, fullmatch=True),
    st.from_regex(r"(CR|cr|PK|RE)[0-9a-fA-Fg-z]{0,40}", fullmatch=True),
    st.text(max_size=40),
)
b64_strings = st.one_of(
    st.binary(max_size=300).map(_b64),
    st.binary(min_size=1, max_size=64).map(lambda b: base64.urlsafe_b64encode(b).decode()),
    st.binary(min_size=1, max_size=64).map(lambda b: _b64(b).rstrip("=")),
    st.binary(min_size=1, max_size=64).map(lambda b: _b64(b) + "="),
    st.binary(min_size=1, max_size=64).map(lambda b: " " + _b64(b)),
    st.binary(min_size=1, max_size=64).map(lambda b: base64.encodebytes(b).decode()),
    st.text(alphabet=_B64_ALPHABET + "-_ \n\t.%\u00e9\u0661", max_size=60),
    st.integers(min_value=0, max_value=400_000).map(lambda n: "A" * (4 * n)),
    st.integers(min_value=1, max_value=200_000).map(lambda n: "\u00e9" * n),
)
ivs = st.one_of(
    st.binary(min_size=IV_SIZE, max_size=IV_SIZE).map(_b64),
    st.binary(max_size=32).map(_b64),
    b64_strings,
)
types = st.one_of(
    st.just("rsa-aes"),
    st.sampled_from(["RSA-AES", "rsa-aes ", "rsa", "aes", "", "rsa\u2010aes"]),
    json_values,
)


@st.composite
def detail_mappings(draw: st.DrawFn) -> dict[str, object]:
    """A mapping with each known field absent, right, wrong, or in both spellings."""
    data: dict[str, object] = {}
    plausible = {"type": types, "sid": sids, "cek": b64_strings, "iv": ivs}
    for field, names in FIELDS.items():
        for name in names:
            choice = draw(st.sampled_from(["absent", "plausible", "plausible", "junk"]))
            if choice == "plausible":
                data[name] = draw(plausible[field])
            elif choice == "junk":
                data[name] = draw(json_values)
        if len(names) == 2 and draw(st.booleans()) and names[0] in data:
            data[names[1]] = data[names[0]]  # both spellings, agreeing
    extra = draw(st.dictionaries(st.text(max_size=20), json_values, max_size=5))
    return {**extra, **data}


def _check_accepted(details: EncryptionDetails) -> None:
    """Whatever from_mapping accepts is well formed and survives both round trips."""
    assert SID_RE.fullmatch(details.public_key_sid)
    assert binascii.a2b_base64(details.encrypted_cek, strict_mode=True)
    assert len(binascii.a2b_base64(details.iv, strict_mode=True)) == IV_SIZE
    assert EncryptionDetails.from_mapping(details.to_status()) == details
    assert EncryptionDetails.from_mapping(details.to_twilio()) == details


@HOSTILE
@given(data=detail_mappings())
@example(
    data={
        "type": "rsa-aes",
        "publicKeySid": "CR" + "a" * 32,
        "encryptedCek": "A" * 4_000_000,
        "iv": _b64(b"\0" * 12),
    }
)
@example(
    data={
        "type": "rsa-aes",
        "public_key_sid": "CR" + "a" * 32,
        "encrypted_cek": "QUJD",
        "iv": "\u00e9" * 100_000,
    }
)
@example(data={"type": ["rsa-aes"], "publicKeySid": "CR" + "a" * 32})
@example(data={"type": "rsa-aes", "publicKeySid": float("nan"), "public_key_sid": float("nan")})
def test_from_mapping_accepts_or_raises_decryption_error(data: dict[str, object]) -> None:
    try:
        details = EncryptionDetails.from_mapping(data)
    except DecryptionError as exc:
        _assert_one_short_line(exc)
    else:
        _check_accepted(details)


@HOSTILE
@given(
    sid=st.from_regex(SID_RE, fullmatch=True),
    cek=st.binary(min_size=1, max_size=600),
    iv=st.binary(min_size=IV_SIZE, max_size=IV_SIZE),
    camel=st.lists(st.booleans(), min_size=2, max_size=2),
)
def test_from_mapping_accepts_every_valid_mix_of_spellings(
    sid: str, cek: bytes, iv: bytes, camel: list[bool]
) -> None:
    data: dict[str, object] = {
        "type": "rsa-aes",
        "publicKeySid" if camel[0] else "public_key_sid": sid,
        "encryptedCek" if camel[1] else "encrypted_cek": _b64(cek),
        "iv": _b64(iv),
    }
    details = EncryptionDetails.from_mapping(data)
    assert (details.public_key_sid, details.encrypted_cek, details.iv) == (sid, _b64(cek), _b64(iv))


@HOSTILE
@given(
    field=st.sampled_from(["sid", "cek"]),
    camel_value=st.one_of(json_values, b64_strings),
    snake_value=st.one_of(json_values, b64_strings),
)
def test_two_spellings_that_disagree_are_refused(
    field: str, camel_value: object, snake_value: object
) -> None:
    assume(camel_value != snake_value)
    base: dict[str, object] = dict(
        EncryptionDetails("CR" + "ab" * 16, _b64(b"\1" * 256), _b64(b"\2" * IV_SIZE)).to_status()
    )
    camel, snake = FIELDS[field]  # `iv` and `type` have one spelling
    base[camel], base[snake] = camel_value, snake_value
    with pytest.raises(DecryptionError) as info:
        EncryptionDetails.from_mapping(base)
    _assert_one_short_line(info.value)


# --- decrypt_stream on cut, extended and tampered objects ---------------------------

plaintexts = st.binary(max_size=200)
chunk_sizes = st.integers(min_value=1, max_value=64) | st.just(1 << 20)


@HOSTILE
@given(plain=plaintexts, chunk_size=chunk_sizes)
def test_untouched_object_decrypts_exactly(plain: bytes, chunk_size: int) -> None:
    content_key = new_content_key()
    blob = _encrypt(content_key, plain)
    assert _decrypt(content_key, blob, len(blob), chunk_size) == plain


@HOSTILE
@given(plain=plaintexts, data=st.data(), chunk_size=chunk_sizes)
def test_any_truncation_fails(plain: bytes, data: st.DataObject, chunk_size: int) -> None:
    """Cut anywhere: whether the caller declares the cut size (a short download saved as
    a file) or the original size (a stream that ended early), it never decrypts."""
    content_key = new_content_key()
    blob = _encrypt(content_key, plain)
    cut = data.draw(st.integers(min_value=0, max_value=len(blob) - 1), label="cut")
    short = blob[:cut]
    for declared in (len(short), len(blob)):
        with pytest.raises(DecryptionError) as info:
            _decrypt(content_key, short, declared, chunk_size)
        message = _assert_one_short_line(info.value)
        assert "truncated" in message or "authentication failed" in message


@HOSTILE
@given(plain=plaintexts, extra=st.binary(min_size=1, max_size=40), chunk_size=chunk_sizes)
def test_appended_bytes_fail(plain: bytes, extra: bytes, chunk_size: int) -> None:
    content_key = new_content_key()
    blob = _encrypt(content_key, plain) + extra
    with pytest.raises(DecryptionError, match="authentication failed") as info:
        _decrypt(content_key, blob, len(blob), chunk_size)
    _assert_one_short_line(info.value)


@HOSTILE
@given(plain=plaintexts, data=st.data(), chunk_size=chunk_sizes)
def test_any_single_byte_change_fails(plain: bytes, data: st.DataObject, chunk_size: int) -> None:
    content_key = new_content_key()
    blob = bytearray(_encrypt(content_key, plain))
    position = data.draw(st.integers(min_value=0, max_value=len(blob) - 1), label="position")
    # a one-bit flip is the smallest change; any other XOR mask changes the byte too
    mask = data.draw(
        st.sampled_from([1 << bit for bit in range(8)]) | st.integers(1, 255), label="mask"
    )
    blob[position] ^= mask
    with pytest.raises(DecryptionError, match="authentication failed") as info:
        _decrypt(content_key, bytes(blob), len(blob), chunk_size)
    _assert_one_short_line(info.value)


@HOSTILE
@given(
    plain=plaintexts,
    flip_key=st.booleans(),
    data=st.data(),
)
def test_a_different_key_or_iv_fails(plain: bytes, flip_key: bool, data: st.DataObject) -> None:
    content_key = new_content_key()
    blob = _encrypt(content_key, plain)
    field = bytearray(content_key.key if flip_key else content_key.iv)
    position = data.draw(st.integers(min_value=0, max_value=len(field) - 1))
    field[position] ^= data.draw(st.integers(1, 255))
    other = (
        ContentKey(key=bytes(field), iv=content_key.iv)
        if flip_key
        else ContentKey(key=content_key.key, iv=bytes(field))
    )
    with pytest.raises(DecryptionError, match="authentication failed"):
        _decrypt(other, blob, len(blob), 1 << 20)


@HOSTILE
@given(garbage=st.binary(max_size=200), chunk_size=chunk_sizes)
def test_garbage_never_decrypts(garbage: bytes, chunk_size: int) -> None:
    with pytest.raises(DecryptionError) as info:
        _decrypt(new_content_key(), garbage, len(garbage), chunk_size)
    _assert_one_short_line(info.value)


def test_a_real_sealed_object_round_trips_through_its_details() -> None:
    """The baseline of the next tests: the right private key opens the right object."""
    content_key, details, blob = _sealed()
    opened = open_content_key(_pem(_rsa()), EncryptionDetails.from_mapping(details.to_twilio()))
    assert opened == content_key
    assert _decrypt(opened, blob, len(blob), 100) == b"hostile " * 40
    assert len(blob) == 320 + TAG_SIZE


# --- open_content_key with the wrong key, a non-key PEM, garbage --------------------


def _assert_no_key_material(message: str, *secrets: bytes | str) -> None:
    assert not LONG_B64_RUN.search(message), f"message quotes encoded data: {message}"
    for secret in secrets:
        text = secret.decode("latin-1") if isinstance(secret, bytes) else secret
        for line in text.splitlines():
            body = line.strip()
            if len(body) >= 16 and not body.startswith("-----"):
                assert body not in message
                assert body[:16] not in message


def _self_signed_cert_pem() -> bytes:
    key = _rsa()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "voicevault-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _not_a_usable_private_key() -> list[object]:
    rsa_body = _pem(_rsa()).decode().splitlines()
    return [
        pytest.param(_public_pem(_rsa()), "could not be loaded", id="public-key-pem"),
        pytest.param(_self_signed_cert_pem(), "could not be loaded", id="certificate-pem"),
        pytest.param(
            "\n".join([rsa_body[0], *rsa_body[1:4], rsa_body[-1]]).encode(),
            "could not be loaded",
            id="cut-rsa-pem",
        ),
        pytest.param(
            "\n".join(
                line.swapcase() if i == 3 else line for i, line in enumerate(rsa_body)
            ).encode(),
            "could not be loaded",
            id="corrupted-rsa-pem-body",
        ),
        pytest.param(
            b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
            "could not be loaded",
            id="empty-rsa-pem",
        ),
        pytest.param(_pem(ec.generate_private_key(ec.SECP384R1())), "not RSA", id="ec-key"),
        pytest.param(_pem(ed25519.Ed25519PrivateKey.generate()), "not RSA", id="ed25519-key"),
        pytest.param(_pem(x25519.X25519PrivateKey.generate()), "not RSA", id="x25519-key"),
        pytest.param(_pem(dsa.generate_private_key(key_size=2048)), "not RSA", id="dsa-key"),
        pytest.param(
            _pem(_rsa()).replace(b"\n", b"\r\n")[: -len(b"-----END PRIVATE KEY-----\r\n")],
            "could not be loaded",
            id="pem-without-end-line",
        ),
        pytest.param(b"", "could not be loaded", id="empty"),
        pytest.param(b"\x00" * 64, "could not be loaded", id="nul-bytes"),
        pytest.param(
            _rsa().private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            "could not be loaded",
            id="der-not-pem",
        ),
    ]


@pytest.mark.parametrize(("pem", "message"), _not_a_usable_private_key())
def test_not_a_usable_private_key(pem: bytes, message: str) -> None:
    _, details, _ = _sealed()
    with pytest.raises(DecryptionError, match=message) as info:
        open_content_key(pem, details)
    _assert_no_key_material(_assert_one_short_line(info.value), pem, _pem(_rsa()))


@pytest.mark.parametrize("bits", [1024, 2048, 3072])
def test_the_wrong_rsa_key_of_any_size_fails(bits: int) -> None:
    _, details, _ = _sealed()
    wrong = _pem(_rsa(bits, which=1))
    with pytest.raises(DecryptionError, match="wrong private key") as info:
        open_content_key(wrong, details)
    message = _assert_one_short_line(info.value)
    _assert_no_key_material(message, wrong, _pem(_rsa()), details.encrypted_cek)


def test_the_wrong_key_with_its_right_password_fails() -> None:
    _, details, _ = _sealed()
    wrong = _pem(_rsa(2048, which=1), password=b"secret-password")
    with pytest.raises(DecryptionError, match="wrong private key") as info:
        open_content_key(wrong, details, password=b"secret-password")
    message = _assert_one_short_line(info.value)
    assert "secret-password" not in message
    _assert_no_key_material(message, wrong)


@HOSTILE
@given(
    garbage=st.one_of(
        st.binary(max_size=400),
        st.binary(max_size=300).map(
            lambda b: (
                b"-----BEGIN PRIVATE KEY-----\n"
                + base64.encodebytes(b)
                + b"-----END PRIVATE KEY-----\n"
            )
        ),
        st.binary(max_size=300).map(
            lambda b: (
                b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n"
                + base64.encodebytes(b)
                + b"-----END ENCRYPTED PRIVATE KEY-----\n"
            )
        ),
    ),
    password=st.none() | st.binary(min_size=1, max_size=20),
)
def test_garbage_private_keys_fail_cleanly(garbage: bytes, password: bytes | None) -> None:
    _, details, _ = _sealed()
    with pytest.raises(DecryptionError) as info:
        open_content_key(garbage, details, password)
    message = _assert_one_short_line(info.value)
    if garbage.startswith(b"-----BEGIN"):
        _assert_no_key_material(message, garbage)
    else:
        _assert_no_key_material(message)
    if password is not None and len(password) >= 4:
        assert password.decode("latin-1") not in message


@RSA_BOUND
@given(wrapped=st.binary(min_size=1, max_size=600))
def test_any_forged_wrapped_key_fails(wrapped: bytes) -> None:
    """An encryptedCek that is valid base64 but not a wrap for this key never opens."""
    _, details, _ = _sealed()
    assume(_b64(wrapped) != details.encrypted_cek)
    forged = EncryptionDetails(details.public_key_sid, _b64(wrapped), details.iv)
    with pytest.raises(DecryptionError) as info:
        open_content_key(_pem(_rsa()), forged)
    _assert_no_key_material(_assert_one_short_line(info.value), _pem(_rsa()), forged.encrypted_cek)


@RSA_BOUND
@given(data=st.data())
def test_a_tampered_wrapped_key_fails(data: st.DataObject) -> None:
    _, details, _ = _sealed()
    wrapped = bytearray(base64.b64decode(details.encrypted_cek))
    position = data.draw(st.integers(min_value=0, max_value=len(wrapped) - 1))
    wrapped[position] ^= data.draw(st.integers(1, 255))
    forged = EncryptionDetails(details.public_key_sid, _b64(bytes(wrapped)), details.iv)
    with pytest.raises(DecryptionError, match="wrong private key or corrupted encryptedCek"):
        open_content_key(_pem(_rsa()), forged)


@pytest.mark.parametrize(
    ("cek", "iv"),
    [
        pytest.param("not base64!", None, id="cek-not-base64"),
        pytest.param(None, "AAAA", id="iv-too-short"),
        pytest.param(None, "AAAAAAAAAAAAAAA", id="iv-bad-padding"),
    ],
)
def test_details_built_directly_are_still_checked(cek: str | None, iv: str | None) -> None:
    """`open_content_key` does not trust that its details came through from_mapping."""
    _, details, _ = _sealed()
    forged = EncryptionDetails(
        details.public_key_sid, cek or details.encrypted_cek, iv or details.iv
    )
    with pytest.raises(DecryptionError) as info:
        open_content_key(_pem(_rsa()), forged)
    _assert_one_short_line(info.value)
