"""Envelope encryption: known AES-GCM vectors, a frozen format vector, and failure modes."""

from __future__ import annotations

import base64
import io
import itertools
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from voicevault.uploader.envelope import (
    IV_SIZE,
    KEY_SIZE,
    MIN_RSA_KEY_BITS,
    TAG_SIZE,
    ContentKey,
    DecryptionError,
    EncryptionDetails,
    InvalidPublicKey,
    StreamEncryptor,
    decrypt_stream,
    encrypted_size,
    load_public_key,
    new_content_key,
    open_content_key,
    public_key_sid,
    seal_content_key,
)

VECTORS = Path(__file__).parent / "vectors"

# --- helpers ------------------------------------------------------------------------


def _public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _private_pem(key: rsa.RSAPrivateKey, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def _encrypt(content_key: ContentKey, data: bytes, cuts: list[int] | None = None) -> bytes:
    """Encrypt `data` in pieces split at `cuts`, as the uploader feeds parts."""
    encryptor = StreamEncryptor(content_key)
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts or []), len(data)]
    body = b"".join(encryptor.update(data[a:b]) for a, b in itertools.pairwise(bounds))
    return body + encryptor.finalize()


def _decrypt(content_key: ContentKey, blob: bytes, chunk_size: int = 1 << 20) -> bytes:
    out = io.BytesIO()
    written = decrypt_stream(content_key, io.BytesIO(blob), out, len(blob), chunk_size)
    assert written == len(blob) - TAG_SIZE
    return out.getvalue()


class TrickleReader(io.BytesIO):
    """A source that returns at most a few bytes per read, like a slow socket."""

    def read(self, size: int | None = -1, /) -> bytes:
        return super().read(min(3, size) if size is not None and size >= 0 else 3)


@pytest.fixture(scope="module")
def rsa2048() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa4096() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=4096)


# --- AES-256-GCM known answers (McGrew-Viega GCM spec test cases 13-15) -------------

GCM_VECTORS = [
    pytest.param("00" * 32, "00" * 12, "", "", "530f8afbc74536b9a963b4f1c4cb738b", id="tc13"),
    pytest.param(
        "00" * 32,
        "00" * 12,
        "00" * 16,
        "cea7403d4d606b6e074ec5d3baf39d18",
        "d0d1c8a799996bf0265b98b5d48ab919",
        id="tc14",
    ),
    pytest.param(
        "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
        "cafebabefacedbaddecaf888",
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
        "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
        "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
        "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
        "b094dac5d93471bdec1a502270e3cc6c",
        id="tc15",
    ),
]


@pytest.mark.parametrize(("key", "iv", "plain", "cipher", "tag"), GCM_VECTORS)
@pytest.mark.parametrize("cuts", [[], [1], [7, 16], [15, 16, 17, 33, 48, 63]])
def test_known_gcm_vectors_through_stream_encryptor(
    key: str, iv: str, plain: str, cipher: str, *, tag: str, cuts: list[int]
) -> None:
    content_key = ContentKey(key=bytes.fromhex(key), iv=bytes.fromhex(iv))
    blob = _encrypt(content_key, bytes.fromhex(plain), cuts)
    assert blob.hex() == cipher + tag


@pytest.mark.parametrize(("key", "iv", "plain", "cipher", "tag"), GCM_VECTORS)
@pytest.mark.parametrize("chunk_size", [1, 5, 16, 1 << 20])
def test_known_gcm_vectors_through_decrypt_stream(
    key: str, iv: str, plain: str, cipher: str, *, tag: str, chunk_size: int
) -> None:
    content_key = ContentKey(key=bytes.fromhex(key), iv=bytes.fromhex(iv))
    assert _decrypt(content_key, bytes.fromhex(cipher + tag), chunk_size).hex() == plain


# --- the frozen format vector -------------------------------------------------------


def test_fixed_vector_still_decrypts() -> None:
    details = EncryptionDetails.from_mapping(
        json.loads((VECTORS / "rsa_aes_details.json").read_text())
    )
    content_key = open_content_key((VECTORS / "rsa_aes_test_key.pem").read_bytes(), details)
    blob = (VECTORS / "rsa_aes_object.bin").read_bytes()
    expected = (VECTORS / "rsa_aes_plaintext.bin").read_bytes()
    assert _decrypt(content_key, blob) == expected
    # The AES side is deterministic for a given CEK and IV: re-encrypting must reproduce
    # the stored object byte for byte.
    assert _encrypt(content_key, expected, [3, 40]) == blob


def test_fixed_vector_key_sid_is_stable() -> None:
    private = serialization.load_pem_private_key(
        (VECTORS / "rsa_aes_test_key.pem").read_bytes(), password=None
    )
    assert isinstance(private, rsa.RSAPrivateKey)
    details = json.loads((VECTORS / "rsa_aes_details.json").read_text())
    assert public_key_sid(private.public_key()) == details["public_key_sid"]


# --- round trips --------------------------------------------------------------------


@pytest.mark.parametrize("key_fixture", ["rsa2048", "rsa4096"])
def test_round_trip(key_fixture: str, request: pytest.FixtureRequest) -> None:
    private: rsa.RSAPrivateKey = request.getfixturevalue(key_fixture)
    public = load_public_key(_public_pem(private))
    content_key = new_content_key()
    details = seal_content_key(public, content_key)
    data = bytes(range(256)) * 41 + b"tail"
    blob = _encrypt(content_key, data, [100, 5000])
    assert len(blob) == encrypted_size(len(data))
    opened = open_content_key(_private_pem(private), details)
    assert opened == content_key
    assert _decrypt(opened, blob, chunk_size=333) == data


def test_round_trip_with_password_protected_pkcs1_key(rsa2048: rsa.RSAPrivateKey) -> None:
    content_key = new_content_key()
    details = seal_content_key(rsa2048.public_key(), content_key)
    pkcs1 = rsa2048.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.BestAvailableEncryption(b"pw"),
    )
    assert open_content_key(pkcs1, details, password=b"pw") == content_key


def test_trickling_source_still_decrypts() -> None:
    content_key = new_content_key()
    data = b"x" * 1000
    blob = _encrypt(content_key, data)
    out = io.BytesIO()
    assert decrypt_stream(content_key, TrickleReader(blob), out, len(blob), 64) == 1000
    assert out.getvalue() == data


def test_decrypt_reads_exactly_the_declared_size() -> None:
    content_key = new_content_key()
    blob = _encrypt(content_key, b"payload")
    src = io.BytesIO(blob + b"NEXT")
    decrypt_stream(content_key, src, io.BytesIO(), len(blob))
    assert src.read() == b"NEXT"


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(max_size=3000),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=6),
    chunk_size=st.integers(min_value=1, max_value=4096),
)
def test_property_round_trip_over_any_chunking(
    data: bytes, cuts: list[int], chunk_size: int
) -> None:
    content_key = new_content_key()
    blob = _encrypt(content_key, data, cuts)
    assert blob == AESGCM(content_key.key).encrypt(content_key.iv, data, None)
    assert _decrypt(content_key, blob, chunk_size) == data


# --- encryption details -------------------------------------------------------------


def _details() -> EncryptionDetails:
    return EncryptionDetails(
        public_key_sid="CR" + "ab" * 16,
        encrypted_cek=base64.b64encode(b"\x01" * 256).decode(),
        iv=base64.b64encode(b"\x02" * IV_SIZE).decode(),
    )


def test_details_forms() -> None:
    details = _details()
    assert details.to_status() == {
        "type": "rsa-aes",
        "publicKeySid": details.public_key_sid,
        "encryptedCek": details.encrypted_cek,
        "iv": details.iv,
    }
    assert details.to_twilio() == {
        "type": "rsa-aes",
        "public_key_sid": details.public_key_sid,
        "encrypted_cek": details.encrypted_cek,
        "iv": details.iv,
    }


def test_details_accept_both_forms_and_a_mix() -> None:
    details = _details()
    status, twilio = details.to_status(), details.to_twilio()
    mixed = {"type": "rsa-aes", "publicKeySid": details.public_key_sid} | {
        "encrypted_cek": details.encrypted_cek,
        "iv": details.iv,
    }
    for form in (status, twilio, mixed, status | twilio):
        assert EncryptionDetails.from_mapping(form) == details


BAD_DETAILS = [
    pytest.param({"type": "rsa"}, "type must be 'rsa-aes'", id="wrong-type"),
    pytest.param({"type": None}, "type must be 'rsa-aes'", id="missing-type"),
    pytest.param({"publicKeySid": None}, "lack 'publicKeySid'", id="missing-sid"),
    pytest.param({"publicKeySid": "PK123"}, "'CR' followed by 32 hex", id="bad-sid"),
    pytest.param({"encryptedCek": "not base64!"}, "encryptedCek is not valid", id="bad-b64"),
    pytest.param({"encryptedCek": ""}, "must not be empty", id="empty-cek"),
    pytest.param({"encryptedCek": 42}, "must be a string", id="cek-not-str"),
    pytest.param({"iv": base64.b64encode(b"\0" * 16).decode()}, "12 bytes", id="iv-16"),
    pytest.param({"iv": "AAAAAAAAAAAAAAAA="}, "iv is not valid base64", id="iv-excess-padding"),
    pytest.param({"iv": "AAAAAAAAAAAAAAA"}, "iv is not valid base64", id="iv-missing-padding"),
    pytest.param({"iv": "AAAAAAAAAAAA\nAAAA"}, "iv is not valid base64", id="iv-newline"),
    pytest.param({"iv": "AAAAAAAAAAAAAAA\u00e9"}, "iv is not valid base64", id="iv-non-ascii"),
    pytest.param({"iv": None}, "lack 'iv'", id="missing-iv"),
    pytest.param({"encrypted_cek": "QUJD"}, "different values", id="conflicting-forms"),
    pytest.param({"iv": ["x"]}, "must be a string", id="iv-list"),
]


@pytest.mark.parametrize(("change", "message"), BAD_DETAILS)
def test_bad_details(change: dict[str, object], message: str) -> None:
    data: dict[str, object] = dict(_details().to_status()) | change
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(DecryptionError, match=message) as info:
        EncryptionDetails.from_mapping(data)
    assert "\n" not in str(info.value)


# --- public keys --------------------------------------------------------------------


def test_public_key_loads_from_str_bytes_and_pkcs1(rsa2048: rsa.RSAPrivateKey) -> None:
    spki = _public_pem(rsa2048)
    pkcs1 = rsa2048.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
    )
    sids = {
        public_key_sid(load_public_key(pem)) for pem in (spki, spki.decode(), pkcs1, pkcs1.decode())
    }
    assert sids == {public_key_sid(rsa2048.public_key())}


def test_public_key_sid_shape_and_uniqueness(
    rsa2048: rsa.RSAPrivateKey, rsa4096: rsa.RSAPrivateKey
) -> None:
    sid = public_key_sid(rsa2048.public_key())
    assert len(sid) == 34
    assert sid.startswith("CR")
    int(sid[2:], 16)
    assert sid != public_key_sid(rsa4096.public_key())


def _invalid_keys() -> list[object]:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    edwards = ed25519.Ed25519PrivateKey.generate().public_key()
    return [
        pytest.param("garbage", "not PEM", id="garbage"),
        pytest.param(b"\x00\xff", "not PEM", id="binary"),
        pytest.param("caf\udce9", "not PEM text", id="unencodable"),
        pytest.param(
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            "could not be parsed",
            id="bad-pem-body",
        ),
        pytest.param(_public_pem(ec.generate_private_key(ec.SECP256R1())), "not RSA", id="ec-key"),
        pytest.param(
            edwards.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            "not RSA",
            id="ed25519-key",
        ),
        pytest.param(_public_pem(small), "too small: 1024 bits < 2048", id="rsa-1024"),
        pytest.param(_private_pem(small), "got a private key", id="private-pem"),
    ]


@pytest.mark.parametrize(("pem", "message"), _invalid_keys())
def test_invalid_public_keys(pem: str | bytes, message: str) -> None:
    with pytest.raises(InvalidPublicKey, match=message) as info:
        load_public_key(pem)
    assert info.value.code == 16104
    assert "\n" not in str(info.value)


def test_private_key_given_as_public_is_not_echoed(rsa2048: rsa.RSAPrivateKey) -> None:
    pem = _private_pem(rsa2048)
    with pytest.raises(InvalidPublicKey) as info:
        load_public_key(pem)
    body = pem.decode().splitlines()[1]
    assert body not in str(info.value)


def test_minimum_key_size_is_2048() -> None:
    assert MIN_RSA_KEY_BITS == 2048


# --- decryption failures ------------------------------------------------------------


@pytest.fixture(scope="module")
def sealed(rsa2048: rsa.RSAPrivateKey) -> tuple[ContentKey, EncryptionDetails, bytes]:
    content_key = new_content_key()
    details = seal_content_key(rsa2048.public_key(), content_key)
    return content_key, details, _encrypt(content_key, b"hello recording " * 50)


@pytest.mark.parametrize("position", [0, 399, -TAG_SIZE, -1])
def test_tampered_byte_fails(
    sealed: tuple[ContentKey, EncryptionDetails, bytes], position: int
) -> None:
    content_key, _, blob = sealed
    tampered = bytearray(blob)
    tampered[position] ^= 0x01
    with pytest.raises(DecryptionError, match="authentication failed"):
        _decrypt(content_key, bytes(tampered))


@pytest.mark.parametrize("size", [0, 1, TAG_SIZE - 1])
def test_smaller_than_a_tag_is_truncated(size: int) -> None:
    with pytest.raises(DecryptionError, match="truncated"):
        decrypt_stream(new_content_key(), io.BytesIO(b"\0" * size), io.BytesIO(), size)


@pytest.mark.parametrize("missing", [1, TAG_SIZE, TAG_SIZE + 5])
def test_input_shorter_than_declared_is_truncated(
    sealed: tuple[ContentKey, EncryptionDetails, bytes], missing: int
) -> None:
    content_key, _, blob = sealed
    with pytest.raises(DecryptionError, match=f"ended {missing} bytes before"):
        decrypt_stream(content_key, io.BytesIO(blob[:-missing]), io.BytesIO(), len(blob))


def test_cut_object_fails_authentication(
    sealed: tuple[ContentKey, EncryptionDetails, bytes],
) -> None:
    content_key, _, blob = sealed
    with pytest.raises(DecryptionError, match="authentication failed"):
        _decrypt(content_key, blob[:-1])


def test_wrong_private_key_fails(
    sealed: tuple[ContentKey, EncryptionDetails, bytes], rsa4096: rsa.RSAPrivateKey
) -> None:
    _, details, _ = sealed
    with pytest.raises(DecryptionError, match="wrong private key"):
        open_content_key(_private_pem(rsa4096), details)


def test_wrong_content_key_fails(sealed: tuple[ContentKey, EncryptionDetails, bytes]) -> None:
    content_key, _, blob = sealed
    other = ContentKey(key=new_content_key().key, iv=content_key.iv)
    with pytest.raises(DecryptionError, match="authentication failed"):
        _decrypt(other, blob)


def test_wrong_or_missing_password_fails(
    sealed: tuple[ContentKey, EncryptionDetails, bytes], rsa2048: rsa.RSAPrivateKey
) -> None:
    _, details, _ = sealed
    locked = _private_pem(rsa2048, password=b"right")
    with pytest.raises(DecryptionError, match="could not be loaded"):
        open_content_key(locked, details, password=b"wrong")
    with pytest.raises(DecryptionError, match="password mismatch"):
        open_content_key(locked, details)
    with pytest.raises(DecryptionError, match="password mismatch"):
        open_content_key(_private_pem(rsa2048), details, password=b"unneeded")


def test_non_rsa_or_garbage_private_key_fails(
    sealed: tuple[ContentKey, EncryptionDetails, bytes],
) -> None:
    _, details, _ = sealed
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(DecryptionError, match="not RSA"):
        open_content_key(ec_pem, details)
    with pytest.raises(DecryptionError, match="could not be loaded"):
        open_content_key(b"not a key", details)


def test_wrapped_key_of_the_wrong_size_is_refused(rsa2048: rsa.RSAPrivateKey) -> None:
    content_key = new_content_key()
    details = seal_content_key(rsa2048.public_key(), content_key)
    short = rsa2048.public_key().encrypt(
        b"\0" * 16, padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
    )
    forged = EncryptionDetails(details.public_key_sid, base64.b64encode(short).decode(), details.iv)
    with pytest.raises(DecryptionError, match="wrong size"):
        open_content_key(_private_pem(rsa2048), forged)


def test_chunk_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="chunk size"):
        decrypt_stream(new_content_key(), io.BytesIO(), io.BytesIO(), TAG_SIZE, chunk_size=0)


# --- content keys and the encryptor -------------------------------------------------


def test_content_key_repr_and_str_hide_the_key() -> None:
    content_key = new_content_key()
    for text in (repr(content_key), str(content_key)):
        assert content_key.key.hex() not in text
        assert repr(content_key.key) not in text
        assert "key=" not in text.replace("ContentKey(", "")
        assert content_key.iv.hex() in text or repr(content_key.iv) in text


def test_content_keys_are_fresh() -> None:
    keys = {new_content_key() for _ in range(64)}
    assert len({k.key for k in keys}) == 64
    assert len({k.iv for k in keys}) == 64
    assert all(len(k.key) == KEY_SIZE and len(k.iv) == IV_SIZE for k in keys)


@pytest.mark.parametrize(("key_len", "iv_len"), [(16, 12), (32, 16), (0, 12)])
def test_content_key_sizes_are_checked(key_len: int, iv_len: int) -> None:
    with pytest.raises(ValueError, match="bytes, got") as info:
        ContentKey(key=b"\x07" * key_len, iv=b"\x08" * iv_len)
    assert "\\x07" not in str(info.value)


def test_encryptor_refuses_data_after_finalize_and_repeats_the_tag() -> None:
    encryptor = StreamEncryptor(new_content_key())
    encryptor.update(b"abc")
    tag = encryptor.finalize()
    assert len(tag) == TAG_SIZE
    assert encryptor.finalize() == tag
    with pytest.raises(ValueError, match="finalized"):
        encryptor.update(b"more")


def test_encrypted_size() -> None:
    assert encrypted_size(0) == TAG_SIZE
    assert encrypted_size(10) == 10 + TAG_SIZE
    with pytest.raises(ValueError, match=">= 0"):
        encrypted_size(-1)
