"""The webhook's serving certificate: a self-signed CA and a serving cert it signs.

Pure (no I/O; only key generation uses randomness). `plan` looks at the Secret's data
and says what it should hold instead, if anything:
- nothing usable yet: a new CA and a new serving certificate;
- the serving certificate expires within `renew_before`, no longer covers the hosts,
  or is not signed by the current CA: a new one, signed by the current CA, so the
  caBundle the API server trusts does not change;
- the CA itself expires within `renew_before`: a new CA, kept in the bundle *next to*
  the old one while the old serving certificate stays in use; the next check re-issues
  the serving certificate from the new CA, once the API server trusts both.
The Secret has the keys of a kubernetes.io/tls Secret plus `ca.crt` (the caBundle) and
`ca.key`, the keys cert-manager uses too.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "TLS_CERT",
    "TLS_KEY",
    "CertPolicy",
    "Plan",
    "ca_bundle",
    "plan",
    "service_hosts",
]

TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
_SIGNING_KEYS = (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)
_SKEW = timedelta(minutes=5)  # not-before in the past: clocks of the API server may lag


@dataclass(frozen=True)
class CertPolicy:
    hosts: tuple[str, ...]  # DNS names and IP addresses the API server calls
    ca_validity: timedelta = timedelta(days=3650)
    cert_validity: timedelta = timedelta(days=365)
    renew_before: timedelta = timedelta(days=30)


@dataclass(frozen=True)
class Plan:
    """`data` is what the Secret should hold; `changed` says whether to write it."""

    data: dict[str, bytes]
    changed: bool
    reason: str


def service_hosts(service: str, namespace: str) -> tuple[str, ...]:
    """The names the API server uses for a webhook Service."""
    return (f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local")


def plan(current: Mapping[str, bytes] | None, policy: CertPolicy, now: datetime) -> Plan:
    data = dict(current or {})
    try:
        cas = x509.load_pem_x509_certificates(data[CA_CERT])
        ca_key = serialization.load_pem_private_key(data[CA_KEY], password=None)
        cert = x509.load_pem_x509_certificate(data[TLS_CERT])
        key = serialization.load_pem_private_key(data[TLS_KEY], password=None)
    except (KeyError, ValueError, TypeError):
        return _fresh(policy, now, "no usable certificate in the Secret")
    ca = cas[0]
    if not isinstance(ca_key, _SIGNING_KEYS) or not _same_key(ca, ca_key):
        return _fresh(policy, now, "the CA key does not match the CA certificate")
    if ca.not_valid_after_utc - policy.renew_before <= now:
        # step 1 of a CA rotation: trust both, keep serving the old certificate for now
        new_ca, new_ca_key = _issue_ca(policy, now)
        old = [c for c in cas if c.not_valid_after_utc > now][:1]
        if not _signed_by(cert, old) or not _serving_ok(cert, key, policy, now):
            return _fresh(
                policy, now, "the CA expires soon and the serving certificate is unusable"
            )
        data[CA_CERT] = _pem(new_ca) + b"".join(_pem(c) for c in old)
        data[CA_KEY] = _key_pem(new_ca_key)
        return Plan(data, True, f"the CA expires at {_when(ca)}: a new CA, trusted beside it")
    problem = _serving_problem(cert, key, ca, policy, now)
    if problem is None:
        return Plan(data, False, f"serving certificate valid until {_when(cert)}")
    tls_crt, tls_key = _issue_serving(ca, ca_key, policy, now)
    data[TLS_CERT], data[TLS_KEY] = tls_crt, tls_key
    return Plan(data, True, problem)


def ca_bundle(data: Mapping[str, bytes]) -> bytes:
    return data.get(CA_CERT, b"")


def not_after(pem: bytes) -> datetime:
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc


# --- checks ---------------------------------------------------------------------------


def _serving_problem(
    cert: x509.Certificate,
    key: object,
    ca: x509.Certificate,
    policy: CertPolicy,
    now: datetime,
) -> str | None:
    if not _signed_by(cert, [ca]):
        return "the serving certificate is not signed by the current CA"
    if cert.not_valid_after_utc - policy.renew_before <= now:
        return f"the serving certificate expires at {_when(cert)}"
    if not _serving_ok(cert, key, policy, now):
        return f"the serving certificate does not cover {', '.join(policy.hosts)}"
    return None


def _serving_ok(cert: x509.Certificate, key: object, policy: CertPolicy, now: datetime) -> bool:
    if not (cert.not_valid_before_utc <= now < cert.not_valid_after_utc):
        return False
    if not _same_key(cert, key):
        return False
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    covered = {str(n) for n in names.get_values_for_type(x509.DNSName)}
    covered |= {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    return set(policy.hosts) <= covered


def _signed_by(cert: x509.Certificate, cas: Sequence[x509.Certificate]) -> bool:
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


def _same_key(cert: x509.Certificate, key: object) -> bool:
    public = getattr(key, "public_key", None)
    if public is None:
        return False
    return bool(cert.public_key() == public())


# --- issuing --------------------------------------------------------------------------


def _fresh(policy: CertPolicy, now: datetime, reason: str) -> Plan:
    ca, ca_key = _issue_ca(policy, now)
    tls_crt, tls_key = _issue_serving(ca, ca_key, policy, now)
    return Plan(
        {CA_CERT: _pem(ca), CA_KEY: _key_pem(ca_key), TLS_CERT: tls_crt, TLS_KEY: tls_key},
        True,
        reason,
    )


def _issue_ca(
    policy: CertPolicy, now: datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "voicevault-webhook-ca")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        _builder(name, name, key.public_key(), now, policy.ca_validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
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
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _issue_serving(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    policy: CertPolicy,
    now: datetime,
) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in policy.hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, policy.hosts[0])])
    validity = min(policy.cert_validity, ca.not_valid_after_utc - now)
    cert = (
        _builder(subject, ca.subject, key.public_key(), now, validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return _pem(cert), _key_pem(key)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime,
    validity: timedelta,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(now + validity)
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _when(cert: x509.Certificate) -> str:
    return cert.not_valid_after_utc.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
