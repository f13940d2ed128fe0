"""Revocation (signed CRL, atomic, idempotent) and rotation."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from fedquilt.coordinator import pki
from fedquilt.coordinator.pki import Role


@pytest.fixture()
def ca_dir(tmp_path: Path) -> Path:
    pki.init_ca(tmp_path / "ca")
    return tmp_path / "ca"


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _crl(ca_dir: Path) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl((ca_dir / "crl.pem").read_bytes())


def _ca_key(ca_dir: Path) -> ec.EllipticCurvePublicKey:
    key = _cert(ca_dir / "ca.pem").public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def test_revoked_serial_is_in_a_crl_signed_by_the_ca(ca_dir: Path, tmp_path: Path) -> None:
    a = pki.issue(ca_dir, tmp_path / "out", "a", Role.SITE)
    b = pki.issue(ca_dir, tmp_path / "out", "b", Role.SITE)
    serial_a = pki.revoke(ca_dir, a.cert, x509.ReasonFlags.key_compromise)
    assert serial_a == _cert(a.cert).serial_number
    crl = _crl(ca_dir)
    assert crl.is_signature_valid(_ca_key(ca_dir))
    assert crl.issuer == _cert(ca_dir / "ca.pem").subject
    entry = crl.get_revoked_certificate_by_serial_number(serial_a)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.key_compromise
    assert crl.get_revoked_certificate_by_serial_number(_cert(b.cert).serial_number) is None
    assert set(pki.revoked_serials(ca_dir)) == {serial_a}


def test_revoke_by_serial_appends_and_is_idempotent(ca_dir: Path, tmp_path: Path) -> None:
    a = _cert(pki.issue(ca_dir, tmp_path / "out", "a", Role.SITE).cert).serial_number
    b = _cert(pki.issue(ca_dir, tmp_path / "out", "b", Role.SITE).cert).serial_number
    number = lambda: _crl(ca_dir).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number  # noqa: E731
    first = number()
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    pki.revoke(ca_dir, a, now=when)
    pki.revoke(ca_dir, b)
    assert number() == first + 2
    before = (ca_dir / "crl.pem").read_bytes()
    assert pki.revoke(ca_dir, a) == a
    assert (ca_dir / "crl.pem").read_bytes() == before  # no duplicate entry, no re-sign
    crl = _crl(ca_dir)
    assert sorted(e.serial_number for e in crl) == sorted([a, b])
    assert crl.get_revoked_certificate_by_serial_number(a).revocation_date_utc == when  # type: ignore[union-attr]
    assert crl.is_signature_valid(_ca_key(ca_dir))
    assert not any(p.name.endswith(".tmp") for p in ca_dir.iterdir())


def test_revoke_rejects_foreign_cert_and_bad_serials(ca_dir: Path, tmp_path: Path) -> None:
    pki.init_ca(tmp_path / "other")
    foreign = pki.issue(tmp_path / "other", tmp_path / "o", "a", Role.SITE)
    with pytest.raises(ValueError, match="not issued by this CA"):
        pki.revoke(ca_dir, foreign.cert)
    with pytest.raises(ValueError, match="-5"):
        pki.revoke(ca_dir, -5)
    with pytest.raises(TypeError, match="True"):
        pki.revoke(ca_dir, True)
    assert pki.revoked_serials(ca_dir) == {}


def test_tampered_crl_is_refused(ca_dir: Path, tmp_path: Path) -> None:
    pki.init_ca(tmp_path / "other")
    shutil.copy(tmp_path / "other" / "crl.pem", ca_dir / "crl.pem")
    with pytest.raises(ValueError, match="not signed by the CA"):
        pki.revoked_serials(ca_dir)


def test_rotate_issues_new_cert_and_supersedes_old(ca_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    old = _cert(pki.issue(ca_dir, out, "coord", Role.COORDINATOR, hosts=["fq.example.org"]).cert)
    new_paths = pki.rotate(ca_dir, out, "coord", Role.COORDINATOR)
    new = _cert(new_paths.cert)
    assert new.serial_number != old.serial_number
    new.verify_directly_issued_by(_cert(ca_dir / "ca.pem"))
    san = new.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["fq.example.org"]  # hosts carried over
    entry = _crl(ca_dir).get_revoked_certificate_by_serial_number(old.serial_number)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.superseded
    assert new.serial_number not in pki.revoked_serials(ca_dir)
    assert [c.serial for c in pki.issued(ca_dir)] == [old.serial_number, new.serial_number]


def test_rotate_unknown_name_fails(ca_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(LookupError, match="'ghost'"):
        pki.rotate(ca_dir, tmp_path, "ghost", Role.SITE)
    assert pki.issued(ca_dir) == []


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_openssl_sees_revocation(ca_dir: Path, tmp_path: Path) -> None:
    a = pki.issue(ca_dir, tmp_path / "out", "a", Role.SITE)
    b = pki.issue(ca_dir, tmp_path / "out", "b", Role.SITE)
    pki.revoke(ca_dir, a.cert)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes((ca_dir / "ca.pem").read_bytes() + (ca_dir / "crl.pem").read_bytes())

    def verify(cert: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["openssl", "verify", "-crl_check", "-CAfile", str(bundle), str(cert)], capture_output=True, text=True
        )

    rejected = verify(a.cert)
    assert rejected.returncode != 0 and "revoked" in (rejected.stdout + rejected.stderr)
    assert verify(b.cert).returncode == 0
