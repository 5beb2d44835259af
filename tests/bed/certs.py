"""Test PKI for the control plane: a CA, serving and client certificates, SA keys.

kube-apiserver authenticates clients by certificate (CN = user, O = groups), so issuing a
certificate is all it takes to act as any user, including a restricted one for RBAC
tests. Every function writes PEM files and returns their paths; nothing is kept in memory.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = dt.timedelta(days=7)
_CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class CertPair:
    """Paths of a PEM certificate and its PEM private key."""

    cert: Path
    key: Path


def _new_key() -> ec.EllipticCurvePrivateKey:
    # EC keys are instant to generate and accepted by Go's TLS for serving and clients.
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, path: Path) -> Path:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _load(ca: CertPair) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{ca.key} is not an EC key written by create_ca")
    return cert, key


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + _VALIDITY)
    )


def create_ca(directory: Path, common_name: str = "voicevault-test-ca") -> CertPair:
    """Self-signed CA (``ca.crt``, ``ca.key``) that signs every other certificate."""
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        _builder(name, name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    return CertPair(_write_cert(cert, directory / "ca.crt"), _write_key(key, directory / "ca.key"))


def _issue(
    ca: CertPair,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    path_stem: Path,
    san: x509.SubjectAlternativeName | None = None,
) -> CertPair:
    ca_cert, ca_key = _load(ca)
    key = _new_key()
    builder = (
        _builder(subject, ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    return CertPair(
        _write_cert(cert, path_stem.with_suffix(".crt")),
        _write_key(key, path_stem.with_suffix(".key")),
    )


def issue_serving_cert(
    ca: CertPair,
    directory: Path,
    name: str = "serving",
    *,
    common_name: str = "localhost",
    ips: Sequence[str] = ("127.0.0.1",),
    dns_names: Sequence[str] = ("localhost",),
) -> CertPair:
    """Server certificate valid for ``ips`` and ``dns_names`` (default: loopback only)."""
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    san = x509.SubjectAlternativeName(names)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return _issue(ca, subject, ExtendedKeyUsageOID.SERVER_AUTH, directory / name, san)


def issue_client_cert(
    ca: CertPair, directory: Path, user: str, groups: list[str], name: str | None = None
) -> CertPair:
    """Client certificate the apiserver maps to ``user`` in ``groups`` (CN and O)."""
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, user)]
    attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
    stem = directory / (name or "client")
    return _issue(ca, x509.Name(attrs), ExtendedKeyUsageOID.CLIENT_AUTH, stem)


def create_service_account_keys(directory: Path) -> CertPair:
    """RSA key pair that signs and verifies service-account tokens (``sa.pub``, ``sa.key``).

    ``CertPair.cert`` holds the public key here: the apiserver takes a bare PEM public key.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    directory.mkdir(parents=True, exist_ok=True)
    pub_path = directory / "sa.pub"
    pub_path.write_bytes(public)
    return CertPair(pub_path, _write_key(key, directory / "sa.key"))
