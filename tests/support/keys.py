"""RSA key pairs for encryption tests (generated once per session: key generation is slow)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


@dataclass(frozen=True)
class KeyPair:
    private_pem: bytes
    public_pem: bytes

    def write(self, directory: Path) -> tuple[Path, Path]:
        """(private, public) PEM files in `directory`."""
        private, public = directory / "private.pem", directory / "public.pem"
        private.write_bytes(self.private_pem)
        public.write_bytes(self.public_pem)
        return private, public


@functools.cache
def key_pair(bits: int = 2048) -> KeyPair:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return KeyPair(
        private_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        public_pem=key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
