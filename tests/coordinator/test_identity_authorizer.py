"""Authorizer: certificate -> Peer, with chain, expiry, revocation and role checks."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedquilt.coordinator import pki
from fedquilt.coordinator.identity import (
    Authorizer,
    IdentityError,
    Peer,
    PermissionDenied,
    RevocationList,
    RevocationListError,
    SiteId,
    Unauthenticated,
    peer_from_auth_context,
)
from fedquilt.coordinator.pki import Role

UTC = dt.timezone.utc


@pytest.fixture()
def ca_dir(tmp_path: Path) -> Path:
    pki.init_ca(tmp_path / "ca")
    return tmp_path / "ca"


def _ctx(pem_path: Path) -> dict[str, list[bytes]]:
    """What grpc's context.auth_context() holds for an mTLS peer (plus unrelated keys)."""
    return {"transport_security_type": [b"ssl"], "x509_pem_cert": [pem_path.read_bytes()]}


def _issue(ca_dir: Path, name: str, role: Role, **kw: object) -> pki.CertPaths:
    return pki.issue(ca_dir, ca_dir.parent / "out", name, role, **kw)  # type: ignore[arg-type]


def test_valid_site_cert_gives_peer(ca_dir: Path) -> None:
    paths = _issue(ca_dir, "hospital-a", Role.SITE)
    cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    expected = Peer(SiteId("hospital-a"), Role.SITE, cert.serial_number, cert.not_valid_after_utc)
    assert peer_from_auth_context(_ctx(paths.cert)) == expected
    auth = Authorizer.from_ca_dir(ca_dir)
    assert auth.check(_ctx(paths.cert), Role.SITE) == expected
    assert auth.check(_ctx(paths.cert), {Role.SITE, Role.ADMIN}) == expected


def test_wrong_role_is_permission_denied(ca_dir: Path) -> None:
    site = _issue(ca_dir, "hospital-a", Role.SITE)
    admin = _issue(ca_dir, "ops", Role.ADMIN)
    auth = Authorizer.from_ca_dir(ca_dir)
    with pytest.raises(PermissionDenied, match="'hospital-a' has role 'site'; this needs admin"):
        auth.check(_ctx(site.cert), Role.ADMIN)
    assert auth.check(_ctx(admin.cert), Role.ADMIN).role is Role.ADMIN
    with pytest.raises(PermissionDenied):
        auth.check(_ctx(admin.cert), {Role.SITE, Role.COORDINATOR})


def test_revoked_cert_is_refused_by_a_running_authorizer(ca_dir: Path) -> None:
    site = _issue(ca_dir, "hospital-a", Role.SITE)
    other = _issue(ca_dir, "hospital-b", Role.SITE)
    auth = Authorizer.from_ca_dir(ca_dir)
    auth.check(_ctx(site.cert), Role.SITE)  # cached as verified before the revocation
    pki.revoke(ca_dir, site.cert)
    with pytest.raises(Unauthenticated, match="revoked"):
        auth.check(_ctx(site.cert), Role.SITE)
    assert auth.check(_ctx(other.cert), Role.SITE).site_id == "hospital-b"
    with pytest.raises(Unauthenticated, match="revoked"):
        Authorizer.from_ca_dir(ca_dir).check(_ctx(site.cert), Role.SITE)


def test_cert_from_another_ca_is_unauthenticated(ca_dir: Path, tmp_path: Path) -> None:
    pki.init_ca(tmp_path / "evil", name="fedquilt federation CA")  # same CA name, different key
    forged = pki.issue(tmp_path / "evil", tmp_path / "evil-out", "hospital-a", Role.ADMIN)
    with pytest.raises(Unauthenticated, match="not issued by the federation CA"):
        Authorizer.from_ca_dir(ca_dir).check(_ctx(forged.cert), Role.ADMIN)


def test_expired_cert_is_unauthenticated(ca_dir: Path) -> None:
    old = _issue(ca_dir, "hospital-a", Role.SITE, days=30, now=dt.datetime(2020, 1, 1, tzinfo=UTC))
    with pytest.raises(Unauthenticated, match="expired at 2020-01-31"):
        Authorizer.from_ca_dir(ca_dir).check(_ctx(old.cert), Role.SITE)
    zero = _issue(ca_dir, "hospital-b", Role.SITE, days=0)
    with pytest.raises(Unauthenticated, match="expired"):
        Authorizer.from_ca_dir(ca_dir, clock=lambda: dt.datetime.now(UTC) + dt.timedelta(seconds=1)).check(
            _ctx(zero.cert), Role.SITE
        )


def test_injected_clock_decides_validity_window(ca_dir: Path) -> None:
    site = _issue(ca_dir, "hospital-a", Role.SITE, days=10, now=dt.datetime(2030, 6, 1, tzinfo=UTC))
    at = lambda t: Authorizer.from_ca_dir(ca_dir, clock=lambda: t)  # noqa: E731
    assert at(dt.datetime(2030, 6, 5, tzinfo=UTC)).check(_ctx(site.cert), Role.SITE).site_id == "hospital-a"
    with pytest.raises(Unauthenticated, match="not valid before"):
        at(dt.datetime(2030, 5, 1, tzinfo=UTC)).check(_ctx(site.cert), Role.SITE)
    with pytest.raises(Unauthenticated, match="expired"):
        at(dt.datetime(2030, 6, 11, 0, 0, 1, tzinfo=UTC)).check(_ctx(site.cert), Role.SITE)


@pytest.mark.parametrize(
    "ctx, message",
    [
        ({}, "no client certificate"),
        ({"x509_pem_cert": []}, "no client certificate"),
        ({"x509_pem_cert": [b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"]}, "unparsable"),
    ],
)
def test_missing_or_garbage_cert_is_unauthenticated(ca_dir: Path, ctx: dict[str, list[bytes]], message: str) -> None:
    with pytest.raises(Unauthenticated, match=message):
        Authorizer.from_ca_dir(ca_dir).check(ctx, Role.SITE)
    with pytest.raises(Unauthenticated, match=message):
        peer_from_auth_context(ctx)


def _hand_signed(ca_dir: Path, subject: x509.Name) -> bytes:
    """A CA-signed cert with an arbitrary subject (what a careless operator tool might produce)."""
    ca_cert, ca_key = pki.load_ca(ca_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1)).sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(
    "attrs, message",
    [
        ([(NameOID.COMMON_NAME, "Bad Name"), (NameOID.ORGANIZATIONAL_UNIT_NAME, "site")], "no valid site name"),
        ([(NameOID.ORGANIZATIONAL_UNIT_NAME, "site")], "0 CNs"),
        ([(NameOID.COMMON_NAME, "a")], "no valid role OU"),
        ([(NameOID.COMMON_NAME, "a"), (NameOID.ORGANIZATIONAL_UNIT_NAME, "root")], "no valid role OU"),
    ],
)
def test_subject_without_valid_identity_is_unauthenticated(
    ca_dir: Path, attrs: list[tuple[x509.ObjectIdentifier, str]], message: str
) -> None:
    pem = _hand_signed(ca_dir, x509.Name([x509.NameAttribute(oid, value) for oid, value in attrs]))
    with pytest.raises(Unauthenticated, match=message):
        Authorizer.from_ca_dir(ca_dir).check({"x509_pem_cert": [pem]}, Role.SITE)


def test_errors_share_one_base() -> None:
    for exc in (Unauthenticated, PermissionDenied, RevocationListError):
        assert issubclass(exc, IdentityError)


def test_revocation_list_reloads_only_on_change_and_fails_closed(ca_dir: Path, tmp_path: Path) -> None:
    ca_cert, _ = pki.load_ca(ca_dir)
    serial = _issue(ca_dir, "a", Role.SITE)
    number = x509.load_pem_x509_certificate(serial.cert.read_bytes()).serial_number
    crl = RevocationList(ca_dir / "crl.pem", ca_cert)
    assert not crl.is_revoked(number)
    pki.revoke(ca_dir, number)
    assert crl.is_revoked(number)
    # A CRL signed by another CA is refused, not silently treated as empty.
    pki.init_ca(tmp_path / "other")
    shutil.copy(tmp_path / "other" / "crl.pem", ca_dir / "crl.pem")
    with pytest.raises(RevocationListError, match="not signed"):
        crl.is_revoked(number)
    os.unlink(ca_dir / "crl.pem")
    with pytest.raises(RevocationListError, match="cannot read"):
        crl.is_revoked(number)
    with pytest.raises(RevocationListError):
        RevocationList(ca_dir / "crl.pem", ca_cert)


def test_revocation_list_does_not_reparse_unchanged_file(ca_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca_cert, _ = pki.load_ca(ca_dir)
    crl = RevocationList(ca_dir / "crl.pem", ca_cert)
    calls: list[Path] = []
    real = pki.read_crl
    monkeypatch.setattr("fedquilt.coordinator.identity.read_crl", lambda p, c: calls.append(p) or real(p, c))
    for _ in range(100):
        crl.is_revoked(1)
    assert calls == []
    pki.revoke(ca_dir, 1)
    assert crl.is_revoked(1) and len(calls) == 1
