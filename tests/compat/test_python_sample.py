"""Objects voicevault encrypts open with the steps of Twilio's Python decryption sample.

Only `cryptography` is used here, never voicevault's own decrypt code: unwrap the CEK
with RSA-OAEP (SHA-256, MGF1-SHA-256), then AES-GCM decrypt the whole object, whose
last 16 bytes are the tag.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from voicevault.uploader.envelope import StreamEncryptor, new_content_key, seal_content_key

VECTORS = Path(__file__).parent.parent / "unit" / "vectors"


def twilio_sample_decrypt(private_key_pem: bytes, details: dict[str, str], blob: bytes) -> bytes:
    """The sample's steps, fed with the snake_case details a status callback carries."""
    private_key = serialization.load_pem_private_key(private_key_pem, password=None)
    assert isinstance(private_key, rsa.RSAPrivateKey)
    cek = private_key.decrypt(
        base64.b64decode(details["encrypted_cek"]),
        padding.OAEP(
            mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
        ),
    )
    return AESGCM(cek).decrypt(base64.b64decode(details["iv"]), blob, None)


@pytest.mark.parametrize(("key_bits", "size"), [(2048, 0), (2048, 4097), (4096, 250_000)])
def test_python_sample_decrypts_what_voicevault_encrypted(key_bits: int, size: int) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=key_bits)
    plain = bytes(i % 251 for i in range(size))
    content_key = new_content_key()
    encryptor = StreamEncryptor(content_key)
    blob = b"".join(encryptor.update(plain[i : i + 1000]) for i in range(0, size, 1000))
    blob += encryptor.finalize()
    details = json.loads(
        json.dumps(seal_content_key(private.public_key(), content_key).to_twilio())
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert details["type"] == "rsa-aes"
    assert twilio_sample_decrypt(pem, details, blob) == plain


def test_python_sample_decrypts_the_committed_vector() -> None:
    details = json.loads((VECTORS / "rsa_aes_details.json").read_text())
    plain = twilio_sample_decrypt(
        (VECTORS / "rsa_aes_test_key.pem").read_bytes(),
        details,
        (VECTORS / "rsa_aes_object.bin").read_bytes(),
    )
    assert plain == (VECTORS / "rsa_aes_plaintext.bin").read_bytes()
