"""Envelope encryption of recordings, byte-compatible with Twilio's recording encryption.

Each recording gets a fresh 256-bit content key (CEK) and 12-byte IV. The file is
encrypted with AES-256-GCM (no AAD) and the 16-byte tag is appended, so the object is
`ciphertext || tag`; the CEK is wrapped with the customer's RSA key using RSA-OAEP with
SHA-256 for both the digest and MGF1. That is exactly what Twilio's published Python
(`cryptography`) and Java (BouncyCastle) decryption samples expect, so customers can
reuse them unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, ClassVar, Final

from voicevault.contract import (
    DETAILS_TYPE,
    IV_SIZE,
    DecryptionError,
    EncryptionDetails,
    strict_b64decode,
)

if TYPE_CHECKING:
    # `cryptography` is imported where it is used: an uploader pod whose batch holds no
    # public key never needs it, and its import is about 20 ms of each pod's start (#19)
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from cryptography.hazmat.primitives.ciphers import CipherContext

__all__ = [
    "DETAILS_TYPE",
    "IV_SIZE",
    "KEY_SIZE",
    "MIN_RSA_KEY_BITS",
    "TAG_SIZE",
    "ContentKey",
    "DecryptionError",
    "EncryptionDetails",
    "InvalidPublicKey",
    "StreamEncryptor",
    "decrypt_stream",
    "encrypted_size",
    "load_public_key",
    "new_content_key",
    "open_content_key",
    "public_key_sid",
    "seal_content_key",
]

MIN_RSA_KEY_BITS: Final = 2048
KEY_SIZE: Final = 32
TAG_SIZE: Final = 16


class InvalidPublicKey(ValueError):  # noqa: N818 - the name is part of the agreed API
    """The customer's public key cannot be used to wrap content keys."""

    code: ClassVar[int] = 16104


def _oaep() -> padding.OAEP:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def load_public_key(pem: str | bytes) -> rsa.RSAPublicKey:
    """Load and vet the customer's key: PEM, RSA, at least MIN_RSA_KEY_BITS."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        data = pem.encode("utf-8") if isinstance(pem, str) else pem
    except UnicodeEncodeError:
        raise InvalidPublicKey("public key is not PEM text; expected ASCII PEM") from None
    if b"-----BEGIN " not in data:
        raise InvalidPublicKey("public key is not PEM; expected '-----BEGIN PUBLIC KEY-----'")
    if b"PRIVATE KEY-----" in data:
        raise InvalidPublicKey(
            "got a private key; expected only the public key (never share the private key)"
        )
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidPublicKey(
            "public key PEM could not be parsed; expected a PEM SubjectPublicKeyInfo "
            "('BEGIN PUBLIC KEY') or PKCS#1 ('BEGIN RSA PUBLIC KEY') block"
        ) from None
    if not isinstance(key, rsa.RSAPublicKey):
        kind = type(key).__name__.removeprefix("_").removesuffix("PublicKey") or "unknown"
        raise InvalidPublicKey(f"public key is not RSA ({kind}); expected an RSA key")
    if key.key_size < MIN_RSA_KEY_BITS:
        raise InvalidPublicKey(f"RSA key is too small: {key.key_size} bits < {MIN_RSA_KEY_BITS}")
    return key


def public_key_sid(key: rsa.RSAPublicKey) -> str:
    """A stable SID for the key (same key → same SID), Twilio's `CR` + 32 hex shape."""
    from cryptography.hazmat.primitives import serialization

    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "CR" + hashlib.sha256(der).hexdigest()[:32]


@dataclass(frozen=True)
class ContentKey:
    """A per-recording AES-256 key and GCM IV; the key never shows in repr or str."""

    key: bytes = field(repr=False)
    iv: bytes

    def __post_init__(self) -> None:
        if len(self.key) != KEY_SIZE:
            raise ValueError(f"content key must be {KEY_SIZE} bytes, got {len(self.key)}")
        if len(self.iv) != IV_SIZE:
            raise ValueError(f"IV must be {IV_SIZE} bytes, got {len(self.iv)}")


def new_content_key() -> ContentKey:
    """A fresh random key and IV: never reuse either across recordings (GCM nonce rule)."""
    return ContentKey(key=secrets.token_bytes(KEY_SIZE), iv=secrets.token_bytes(IV_SIZE))


def seal_content_key(public_key: rsa.RSAPublicKey, content_key: ContentKey) -> EncryptionDetails:
    """Wrap the CEK for the key holder alone; the result is safe to store and publish."""
    wrapped = public_key.encrypt(content_key.key, _oaep())
    return EncryptionDetails(
        public_key_sid=public_key_sid(public_key),
        encrypted_cek=base64.b64encode(wrapped).decode("ascii"),
        iv=base64.b64encode(content_key.iv).decode("ascii"),
    )


class StreamEncryptor:
    """AES-256-GCM over a stream in chunks, so memory stays flat for any file size."""

    def __init__(self, content_key: ContentKey) -> None:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        cipher = Cipher(algorithms.AES(content_key.key), modes.GCM(content_key.iv))
        self._context = cipher.encryptor()
        self._tag: bytes | None = None

    def update(self, chunk: bytes) -> bytes:
        """Ciphertext for this chunk (same length as the chunk)."""
        if self._tag is not None:
            raise ValueError("encryptor is finalized; expected no more data")
        return self._context.update(chunk)

    def update_into(self, chunk: bytes | memoryview, out: bytearray | memoryview) -> int:
        """Encrypt `chunk` into `out` without allocating; `out` needs 15 spare bytes."""
        if self._tag is not None:
            raise ValueError("encryptor is finalized; expected no more data")
        return self._context.update_into(chunk, out)

    def finalize(self) -> bytes:
        """The 16-byte tag, to append after the last ciphertext chunk."""
        if self._tag is None:
            self._context.finalize()
            self._tag = self._context.tag
        return self._tag


def encrypted_size(plain_size: int) -> int:
    """Object size for a plaintext size: GCM adds only the trailing tag."""
    if plain_size < 0:
        raise ValueError(f"plaintext size must be >= 0, got {plain_size}")
    return plain_size + TAG_SIZE


def open_content_key(
    private_key_pem: bytes, details: EncryptionDetails, password: bytes | None = None
) -> ContentKey:
    """Unwrap the CEK with the customer's private key (the decrypt command's first step)."""
    private_key = _load_private_key(private_key_pem, password)
    wrapped = strict_b64decode(details.encrypted_cek, "encryptedCek")
    iv = strict_b64decode(details.iv, "iv")
    try:
        key = private_key.decrypt(wrapped, _oaep())
    except ValueError:
        raise DecryptionError(
            "content key could not be unwrapped: wrong private key or corrupted encryptedCek"
        ) from None
    if len(key) != KEY_SIZE or len(iv) != IV_SIZE:
        raise DecryptionError(
            f"unwrapped key or iv has the wrong size; expected {KEY_SIZE} and {IV_SIZE} bytes"
        )
    return ContentKey(key=key, iv=iv)


def _load_private_key(pem: bytes, password: bytes | None) -> rsa.RSAPrivateKey:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        key = serialization.load_pem_private_key(pem, password=password)
    except TypeError:
        raise DecryptionError(
            "private key password mismatch: the key is encrypted and needs one, or is "
            "not and must not get one"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise DecryptionError(
            "private key could not be loaded; expected an RSA private key PEM (PKCS#8 or "
            "PKCS#1) and the right password"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise DecryptionError("private key is not RSA; expected an RSA private key")
    return key


def decrypt_stream(
    content_key: ContentKey,
    src: BinaryIO,
    dst: BinaryIO,
    ciphertext_size: int,
    chunk_size: int = 1 << 20,
) -> int:
    """Decrypt `ciphertext || tag` from src to dst in chunks; return plaintext bytes.

    Plaintext is written before the tag at the end can be checked, so on DecryptionError
    the caller must discard dst (write to a temporary file and rename on success).
    Exactly ciphertext_size bytes are read from src.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk size must be > 0, got {chunk_size}")
    if ciphertext_size < TAG_SIZE:
        raise DecryptionError(
            f"encrypted object is truncated: {ciphertext_size} bytes is smaller than the "
            f"{TAG_SIZE}-byte tag"
        )
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    cipher = Cipher(algorithms.AES(content_key.key), modes.GCM(content_key.iv))
    context = cipher.decryptor()
    body = ciphertext_size - TAG_SIZE
    _copy_through(context, src, dst, body, chunk_size)
    tag = _read_exactly(src, TAG_SIZE)
    try:
        dst.write(context.finalize_with_tag(tag))
    except InvalidTag:
        raise DecryptionError(
            "authentication failed: wrong key, or the object was modified or truncated"
        ) from None
    return body


def _copy_through(
    context: CipherContext, src: BinaryIO, dst: BinaryIO, size: int, chunk_size: int
) -> None:
    remaining = size
    while remaining:
        chunk = src.read(min(chunk_size, remaining))
        if not chunk:
            raise _truncated(remaining + TAG_SIZE)
        remaining -= len(chunk)
        dst.write(context.update(chunk))


def _read_exactly(src: BinaryIO, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = src.read(size - len(data))
        if not chunk:
            raise _truncated(size - len(data))
        data += chunk
    return data


def _truncated(missing: int) -> DecryptionError:
    return DecryptionError(
        f"encrypted object is truncated: input ended {missing} bytes before the declared size"
    )
