"""CA creation and certificate issuance: chain, key modes, names, extensions, expiry scan."""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedquilt.coordinator import pki
from fedquilt.coordinator.pki import Role


@pytest.fixture()
def ca_dir(tmp_path: Path) -> Path:
    pki.init_ca(tmp_path / "ca")
    return tmp_path / "ca"


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_ca_is_a_self_signed_p256_ca_with_private_key_0600(ca_dir: Path) -> None:
    ca = _cert(ca_dir / "ca.pem")
    ca.verify_directly_issued_by(ca)
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "fedquilt federation CA"
    assert _mode(ca_dir / "ca.key") == 0o600
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert dt.timedelta(days=3650) <= lifetime <= dt.timedelta(days=3650, minutes=6)
    assert pki.issued(ca_dir) == [] and pki.revoked_serials(ca_dir) == {}


def test_init_ca_refuses_to_overwrite_unless_forced(ca_dir: Path) -> None:
    before = (ca_dir / "ca.pem").read_bytes()
    with pytest.raises(FileExistsError, match="ca.pem"):
        pki.init_ca(ca_dir)
    assert (ca_dir / "ca.pem").read_bytes() == before
    pki.init_ca(ca_dir, force=True)
    assert (ca_dir / "ca.pem").read_bytes() != before


@pytest.mark.parametrize("role", list(Role))
def test_issued_cert_chains_to_ca_with_identity_in_subject(ca_dir: Path, tmp_path: Path, role: Role) -> None:
    paths = pki.issue(ca_dir, tmp_path / "out", "site-1.example_x", role, days=10)
    ca, leaf = _cert(ca_dir / "ca.pem"), _cert(paths.cert)
    leaf.verify_directly_issued_by(ca)
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "site-1.example_x"
    assert leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == role.value
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = set(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    server = {ExtendedKeyUsageOID.SERVER_AUTH} if role is Role.COORDINATOR else set()
    assert eku == {ExtendedKeyUsageOID.CLIENT_AUTH} | server
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    assert aki == ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    ski = leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(leaf.public_key())  # type: ignore[arg-type]
    assert _mode(paths.key) == 0o600
    assert paths.ca.read_bytes() == (ca_dir / "ca.pem").read_bytes()
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert dt.timedelta(days=10) <= lifetime <= dt.timedelta(days=10, minutes=6)
    (entry,) = pki.issued(ca_dir)
    assert (entry.name, entry.role, entry.serial) == ("site-1.example_x", role, leaf.serial_number)


def test_key_file_matches_certificate(ca_dir: Path, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    paths = pki.issue(ca_dir, tmp_path / "out", "a", Role.SITE)
    key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
    assert key.public_key() == _cert(paths.cert).public_key()


def test_coordinator_default_hosts_and_explicit_hosts(ca_dir: Path, tmp_path: Path) -> None:
    coord = _cert(pki.issue(ca_dir, tmp_path / "out", "coord", Role.COORDINATOR).cert)
    san = coord.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address(a) for a in ("127.0.0.1", "::1")}
    hosts = ["fq.example.org", "10.0.0.7"]
    other = _cert(pki.issue(ca_dir, tmp_path / "out", "c2", Role.COORDINATOR, hosts=hosts).cert)
    san = other.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["fq.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    site = _cert(pki.issue(ca_dir, tmp_path / "out", "s", Role.SITE).cert)
    with pytest.raises(x509.ExtensionNotFound):
        site.extensions.get_extension_for_class(x509.SubjectAlternativeName)


@pytest.mark.parametrize(
    "bad", ["", "Hospital", "-lead", ".lead", "_lead", "a b", "a/b", "a" * 64, "name\n", "é", "ca", "crl", "index"]
)
def test_bad_names_rejected_with_the_name_in_the_message(ca_dir: Path, tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="certificate name") as info:
        pki.issue(ca_dir, tmp_path / "out", bad, Role.SITE)
    assert repr(bad) in str(info.value)
    assert not (tmp_path / "out").exists() and pki.issued(ca_dir) == []


@pytest.mark.parametrize("good", ["a", "0", "a" * 63, "site-1", "lab.x_y-z"])
def test_good_names_accepted(good: str) -> None:
    assert pki.validate_name(good) == good


def test_bad_hosts_days_and_role_rejected(ca_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'bad host'"):
        pki.issue(ca_dir, tmp_path, "a", Role.SITE, hosts=["bad host"])
    with pytest.raises(ValueError, match="-1"):
        pki.issue(ca_dir, tmp_path, "a", Role.SITE, days=-1)
    with pytest.raises(TypeError, match="'site'"):
        pki.issue(ca_dir, tmp_path, "a", "site")  # type: ignore[arg-type]


def test_issue_without_ca_names_the_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="certs init"):
        pki.issue(tmp_path / "nope", tmp_path / "out", "a", Role.SITE)


def test_expiring_lists_soon_and_past_expiries_only(ca_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    pki.issue(ca_dir, out, "long", Role.SITE, days=365)
    soon = pki.issue(ca_dir, out, "soon", Role.SITE, days=5)
    past = pki.issue(ca_dir, out, "past", Role.SITE, days=1, now=dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc))
    found = pki.expiring(out, within_days=30)
    assert [name for name, _ in found] == ["past", "soon"]
    assert found[0][1] == dt.datetime(2020, 1, 2, tzinfo=dt.timezone.utc)
    assert found[1][1] == _cert(soon.cert).not_valid_after_utc
    assert pki.expiring([soon, past.cert], within_days=1) == [found[0]]
    assert [n for n, _ in pki.expiring(out, within_days=400)] == ["past", "soon", "long"]


def test_concurrent_issues_keep_every_index_entry(ca_dir: Path, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> int:
        return _cert(pki.issue(ca_dir, tmp_path / "o", f"s{i}", Role.SITE).cert).serial_number

    with ThreadPoolExecutor(8) as pool:
        serials = set(pool.map(one, range(16)))
    assert {c.serial for c in pki.issued(ca_dir)} == serials and len(serials) == 16


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_openssl_independently_verifies_chain_and_purpose(ca_dir: Path, tmp_path: Path) -> None:
    site = pki.issue(ca_dir, tmp_path / "out", "site-a", Role.SITE)
    coord = pki.issue(ca_dir, tmp_path / "out", "coord", Role.COORDINATOR)
    ca = str(ca_dir / "ca.pem")

    def verify(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["openssl", "verify", "-CAfile", ca, *args], capture_output=True, text=True)

    assert verify("-purpose", "sslclient", str(site.cert)).returncode == 0
    assert verify("-purpose", "sslserver", str(coord.cert)).returncode == 0
    assert verify("-purpose", "sslserver", str(site.cert)).returncode != 0  # sites may not act as servers
    other = tmp_path / "other"
    pki.init_ca(other)
    foreign = pki.issue(other, tmp_path / "o2", "site-a", Role.SITE)
    assert verify(str(foreign.cert)).returncode != 0
