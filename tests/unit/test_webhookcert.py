"""The webhook certificate plan: issue, keep, renew, rotate the CA without a gap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509

from voicevault.operator import webhookcert
from voicevault.operator.webhook import ReloadingContext
from voicevault.operator.webhookcert import CA_CERT, CA_KEY, TLS_CERT, TLS_KEY, CertPolicy, plan

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
POLICY = CertPolicy(hosts=(*webhookcert.service_hosts("voicevault", "vv-system"), "127.0.0.1"))


def _leaf(data: dict[str, bytes]) -> x509.Certificate:
    return x509.load_pem_x509_certificate(data[TLS_CERT])


def _verifies(data: dict[str, bytes], bundle: bytes) -> bool:
    leaf = _leaf(data)
    return any(_issued(leaf, ca) for ca in x509.load_pem_x509_certificates(bundle))


def _issued(leaf: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(ca)
    except Exception:
        return False
    return True


def test_an_empty_secret_gets_a_ca_and_a_serving_certificate_for_every_host() -> None:
    first = plan(None, POLICY, NOW)
    assert first.changed
    assert set(first.data) == {CA_CERT, CA_KEY, TLS_CERT, TLS_KEY}
    leaf = _leaf(first.data)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [
        "voicevault.vv-system.svc",
        "voicevault.vv-system.svc.cluster.local",
    ]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert _verifies(first.data, first.data[CA_CERT])
    (ca,) = x509.load_pem_x509_certificates(first.data[CA_CERT])
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # the pair loads into the server's TLS context
    tls = ReloadingContext()
    tls.load(first.data[TLS_CERT], first.data[TLS_KEY])
    assert tls.cert == first.data[TLS_CERT]


def test_a_current_certificate_is_kept() -> None:
    first = plan(None, POLICY, NOW)
    again = plan(first.data, POLICY, NOW + timedelta(days=100))
    assert not again.changed
    assert again.data == first.data


def test_a_serving_certificate_near_expiry_is_renewed_by_the_same_ca() -> None:
    first = plan(None, POLICY, NOW)
    later = NOW + timedelta(days=340)  # 25 days left, renew_before is 30
    renewed = plan(first.data, POLICY, later)
    assert renewed.changed
    assert "expires at" in renewed.reason
    assert renewed.data[CA_CERT] == first.data[CA_CERT], "the caBundle does not change"
    assert renewed.data[TLS_CERT] != first.data[TLS_CERT]
    assert _leaf(renewed.data).not_valid_after_utc > later + timedelta(days=300)
    assert _verifies(renewed.data, first.data[CA_CERT])


def test_a_certificate_missing_a_host_is_reissued() -> None:
    first = plan(None, CertPolicy(hosts=("voicevault.vv-system.svc",)), NOW)
    reissued = plan(first.data, POLICY, NOW)
    assert reissued.changed
    assert "does not cover" in reissued.reason
    assert reissued.data[CA_CERT] == first.data[CA_CERT]


def test_garbage_in_the_secret_starts_over() -> None:
    fresh = plan({TLS_CERT: b"junk", TLS_KEY: b"junk"}, POLICY, NOW)
    assert fresh.changed
    assert _verifies(fresh.data, fresh.data[CA_CERT])
    other = plan(None, POLICY, NOW)
    mixed = dict(fresh.data) | {CA_KEY: other.data[CA_KEY]}
    assert "does not match" in plan(mixed, POLICY, NOW).reason


def test_a_serving_certificate_from_another_ca_is_reissued() -> None:
    ours, theirs = plan(None, POLICY, NOW), plan(None, POLICY, NOW)
    mixed = dict(ours.data) | {TLS_CERT: theirs.data[TLS_CERT], TLS_KEY: theirs.data[TLS_KEY]}
    fixed = plan(mixed, POLICY, NOW)
    assert fixed.changed
    assert _verifies(fixed.data, ours.data[CA_CERT])


def test_ca_rotation_trusts_both_before_serving_from_the_new_ca() -> None:
    policy = CertPolicy(
        hosts=POLICY.hosts, ca_validity=timedelta(days=400), cert_validity=timedelta(days=365)
    )
    first = plan(None, policy, NOW)
    # the leaf is renewed first; its validity stops at the CA's end (NOW + 400 days)
    renewed = plan(first.data, policy, NOW + timedelta(days=340))
    assert renewed.changed
    assert renewed.data[CA_CERT] == first.data[CA_CERT]
    assert _leaf(renewed.data).not_valid_after_utc == NOW + timedelta(days=400)
    near = NOW + timedelta(days=375)  # the CA has 25 days left
    step1 = plan(renewed.data, policy, near)
    assert step1.changed
    assert "the CA expires" in step1.reason
    bundle = x509.load_pem_x509_certificates(step1.data[CA_CERT])
    assert len(bundle) == 2, "new CA first, old CA kept"
    assert step1.data[TLS_CERT] == renewed.data[TLS_CERT], "still serving the old certificate"
    assert _verifies(step1.data, step1.data[CA_CERT])
    step2 = plan(step1.data, policy, near)
    assert step2.changed
    assert "not signed by the current CA" in step2.reason
    assert step2.data[CA_CERT] == step1.data[CA_CERT]
    assert _issued(_leaf(step2.data), bundle[0])
    assert not plan(step2.data, policy, near).changed
