"""The federation's certificate authority: create it, issue, revoke and rotate certificates.

Theory of operation. One CA directory holds the CA key pair (``ca.pem``, ``ca.key`` mode 0600),
a signed revocation list (``crl.pem``, always present once the CA exists) and ``index.json``,
the record of every certificate issued (name, role, serial, validity, hosts). A leaf
certificate's subject is ``CN=<name>, OU=<role>``; the coordinator derives a peer's identity and
role from exactly those two fields (see ``identity.py``). All keys are EC P-256, every signature
is ECDSA-SHA256, and every file is written atomically (temp file + ``os.replace``) under an
exclusive lock on ``ca_dir/.lock`` so that concurrent ``fedquilt certs`` runs cannot lose an
index entry or a revocation. Revocation status lives only in the CRL; the index never copies it.
"""

from __future__ import annotations

import datetime as dt
import enum
import fcntl
import ipaddress
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..atomic_file import atomic_write

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
CRL_FILE = "crl.pem"
INDEX_FILE = "index.json"
NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,62}"
_RESERVED_NAMES = frozenset({"ca", "crl", "index"})
_SKEW = dt.timedelta(minutes=5)  # not_before is back-dated so small clock skew does not reject new certs
_CRL_DAYS = 365
_COORDINATOR_HOSTS = ("localhost", "127.0.0.1", "::1")
_PUBLIC = 0o644
"""Mode of certificates, the index and the CRL (private keys are written 0600)."""


class Role(enum.Enum):
    """What a certificate holder may do; stored as the subject's OU."""

    SITE = "site"
    COORDINATOR = "coordinator"
    ADMIN = "admin"
    CONSUMER = "consumer"
    """May only list and pull published versions (which roles may pull is the coordinator's setting)."""


@dataclass(frozen=True)
class CertPaths:
    """Where one certificate, its private key and the CA certificate were written."""

    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class IssuedCert:
    """One entry of the CA's index of issued certificates."""

    name: str
    role: Role
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime
    hosts: tuple[str, ...]
    cert_path: Path


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid certificate name, else raise a ValueError naming it."""
    if not isinstance(name, str) or re.fullmatch(NAME_PATTERN, name) is None:
        raise ValueError(
            f"certificate name must match ^{NAME_PATTERN}$ (1-63 chars: lowercase letters, digits, "
            f"'.', '_', '-'; starting with a letter or digit), got {name!r}"
        )
    if name in _RESERVED_NAMES:
        raise ValueError(f"certificate name {name!r} is reserved (it would clash with {name}.pem)")
    return name


def init_ca(
    dir: Path, name: str = "fedquilt federation CA", days: int = 3650, *, force: bool = False
) -> CertPaths:
    """Create a self-signed CA (EC P-256) in ``dir`` with an empty CRL and index."""
    dir = Path(dir)
    _check_days(days)
    if not force:
        for existing in (dir / CA_CERT, dir / CA_KEY):
            if existing.exists():
                raise FileExistsError(f"a CA already exists at {existing}; pass force=True to replace it")
    dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    with _ca_lock(dir):
        atomic_write(dir / CA_KEY, _key_pem(key), mode=0o600)
        atomic_write(dir / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), mode=_PUBLIC)
        _write_crl(dir, cert, key, [], now)
        _save_index(dir, [])
    return CertPaths(cert=dir / CA_CERT, key=dir / CA_KEY, ca=dir / CA_CERT)


def issue(
    ca_dir: Path,
    out_dir: Path,
    name: str,
    role: Role,
    days: int = 365,
    hosts: Sequence[str] = (),
    *,
    now: dt.datetime | None = None,
) -> CertPaths:
    """Issue ``<name>.pem`` / ``<name>.key`` (0600) into ``out_dir`` with a copy of ``ca.pem``.

    ``now`` is a test hook: validity runs from ``now - 5 min`` to ``now + days``.
    """
    ca_dir, out_dir = Path(ca_dir), Path(out_dir)
    validate_name(name)
    if not isinstance(role, Role):
        raise TypeError(f"role must be a Role, got {role!r}")
    _check_days(days)
    if not hosts and role is Role.COORDINATOR:
        hosts = _COORDINATOR_HOSTS
    san = _subject_alt_names(hosts)
    start = _now() if now is None else now.astimezone(dt.timezone.utc).replace(microsecond=0)
    ca_cert, ca_key = load_ca(ca_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if role is Role.COORDINATOR:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, name),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.value),
    ])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - _SKEW)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_id(ca_cert), critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = CertPaths(cert=out_dir / f"{name}.pem", key=out_dir / f"{name}.key", ca=out_dir / CA_CERT)
    with _ca_lock(ca_dir):
        atomic_write(paths.key, _key_pem(key), mode=0o600)
        atomic_write(paths.cert, cert.public_bytes(serialization.Encoding.PEM), mode=_PUBLIC)
        if not (paths.ca.exists() and paths.ca.samefile(ca_dir / CA_CERT)):
            atomic_write(paths.ca, (ca_dir / CA_CERT).read_bytes(), mode=_PUBLIC)
        entry = IssuedCert(
            name, role, cert.serial_number, cert.not_valid_before_utc, cert.not_valid_after_utc,
            tuple(hosts), paths.cert.resolve(),
        )
        _save_index(ca_dir, [*issued(ca_dir), entry])
    return paths


def revoke(
    ca_dir: Path,
    cert: Path | int,
    reason: x509.ReasonFlags = x509.ReasonFlags.unspecified,
    *,
    now: dt.datetime | None = None,
) -> int:
    """Add a certificate (PEM path or serial) to the signed CRL; returns its serial (idempotent)."""
    ca_dir = Path(ca_dir)
    ca_cert, ca_key = load_ca(ca_dir)
    serial = _serial_of(cert, ca_cert)
    when = _now() if now is None else now.astimezone(dt.timezone.utc).replace(microsecond=0)
    with _ca_lock(ca_dir):
        entries = list(load_crl(ca_dir, ca_cert))
        if any(e.serial_number == serial for e in entries):
            return serial
        builder = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when)
        if reason is not x509.ReasonFlags.unspecified:  # RFC 5280 5.3.1: omit rather than say "unspecified"
            builder = builder.add_extension(x509.CRLReason(reason), critical=False)
        _write_crl(ca_dir, ca_cert, ca_key, [*entries, builder.build()], when)
    return serial


def rotate(
    ca_dir: Path, out_dir: Path, name: str, role: Role, days: int = 365, hosts: Sequence[str] = ()
) -> CertPaths:
    """Issue a fresh certificate for ``name`` and revoke its previous one as superseded.

    Without ``hosts`` the previous certificate's hosts are kept.
    """
    ca_dir = Path(ca_dir)
    revoked = revoked_serials(ca_dir)
    previous = [c for c in issued(ca_dir) if c.name == name and c.serial not in revoked]
    if not previous:
        raise LookupError(f"no unrevoked certificate named {name!r} in {ca_dir / INDEX_FILE}; use issue instead")
    paths = issue(ca_dir, out_dir, name, role, days, hosts or previous[-1].hosts)
    for old in previous:
        revoke(ca_dir, old.serial, x509.ReasonFlags.superseded)
    return paths


def expiring(
    certs: Path | Iterable[Path | CertPaths], within_days: int = 30, *, now: dt.datetime | None = None
) -> list[tuple[str, dt.datetime]]:
    """(CN, not_after) of certificates that expire within ``within_days`` (or already have), soonest first.

    ``certs`` is a directory (every ``*.pem`` that is a certificate) or a list of PEM paths / CertPaths.
    """
    if isinstance(certs, Path):
        files = sorted(certs.glob("*.pem")) if certs.is_dir() else [certs]
    else:
        files = [c.cert if isinstance(c, CertPaths) else Path(c) for c in certs]
    limit = (_now() if now is None else now) + dt.timedelta(days=within_days)
    found: dict[int, tuple[str, dt.datetime]] = {}
    for file in files:
        try:
            cert = x509.load_pem_x509_certificate(file.read_bytes())
        except ValueError:
            continue  # not a certificate (e.g. crl.pem)
        if cert.not_valid_after_utc <= limit:
            found[cert.serial_number] = (common_name(cert), cert.not_valid_after_utc)
    return sorted(found.values(), key=lambda item: (item[1], item[0]))


def load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA certificate and private key stored in ``ca_dir``."""
    cert_path, key_path = Path(ca_dir) / CA_CERT, Path(ca_dir) / CA_KEY
    if not cert_path.exists() or not key_path.exists():
        raise FileNotFoundError(
            f"no CA in {ca_dir} (missing {CA_CERT} or {CA_KEY}); run `fedquilt certs init --dir {ca_dir}`"
        )
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path} is not an EC private key")
    return x509.load_pem_x509_certificate(cert_path.read_bytes()), key


def load_crl(ca_dir: Path, ca_cert: x509.Certificate) -> x509.CertificateRevocationList:
    """The CA's CRL (``ca_dir/crl.pem``), after checking that ``ca_cert`` signed it."""
    return read_crl(Path(ca_dir) / CRL_FILE, ca_cert)


def read_crl(path: Path, ca_cert: x509.Certificate) -> x509.CertificateRevocationList:
    """The CRL at ``path``; ValueError unless ``ca_cert`` issued and signed it."""
    crl = x509.load_pem_x509_crl(Path(path).read_bytes())
    public_key = ca_cert.public_key()
    signed = isinstance(public_key, ec.EllipticCurvePublicKey) and crl.is_signature_valid(public_key)
    if crl.issuer != ca_cert.subject or not signed:
        raise ValueError(f"{path} is not signed by the CA {ca_cert.subject.rfc4514_string()!r}")
    return crl


def revoked_serials(ca_dir: Path) -> dict[int, dt.datetime]:
    """Serial -> revocation time of every revoked certificate."""
    ca_cert, _ = load_ca(ca_dir)
    return {e.serial_number: e.revocation_date_utc for e in load_crl(ca_dir, ca_cert)}


def issued(ca_dir: Path) -> list[IssuedCert]:
    """Every certificate recorded in the CA's index, oldest first."""
    path = Path(ca_dir) / INDEX_FILE
    if not path.exists():
        return []
    return [
        IssuedCert(
            name=r["name"], role=Role(r["role"]), serial=int(r["serial"]),
            not_before=dt.datetime.fromisoformat(r["not_before"]), not_after=dt.datetime.fromisoformat(r["not_after"]),
            hosts=tuple(r["hosts"]), cert_path=Path(r["cert"]),
        )
        for r in json.loads(path.read_text())["certs"]
    ]


def common_name(cert: x509.Certificate) -> str:
    """The subject's single CN (ValueError if there is not exactly one)."""
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(values) != 1:
        raise ValueError(f"certificate {cert.serial_number:x} has {len(values)} CNs, expected 1")
    return str(values[0].value)


def _save_index(ca_dir: Path, certs: list[IssuedCert]) -> None:
    records = [
        {"name": c.name, "role": c.role.value, "serial": str(c.serial), "not_before": c.not_before.isoformat(),
         "not_after": c.not_after.isoformat(), "hosts": list(c.hosts), "cert": str(c.cert_path)}
        for c in certs
    ]
    body = (json.dumps({"version": 1, "certs": records}, indent=2) + "\n").encode()
    atomic_write(ca_dir / INDEX_FILE, body, mode=_PUBLIC)


def _write_crl(
    ca_dir: Path, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
    entries: Sequence[x509.RevokedCertificate], now: dt.datetime,
) -> None:
    number = 0
    if (ca_dir / CRL_FILE).exists():
        old = x509.load_pem_x509_crl((ca_dir / CRL_FILE).read_bytes())
        number = old.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(days=_CRL_DAYS))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(_authority_key_id(ca_cert), critical=False)
    )
    for entry in entries:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca_key, hashes.SHA256())
    atomic_write(ca_dir / CRL_FILE, crl.public_bytes(serialization.Encoding.PEM), mode=_PUBLIC)


def _serial_of(cert: Path | int, ca_cert: x509.Certificate) -> int:
    if isinstance(cert, bool) or not isinstance(cert, (int, Path, str)):
        raise TypeError(f"expected a certificate path or serial number, got {cert!r}")
    if isinstance(cert, int):
        if cert <= 0:
            raise ValueError(f"serial number must be positive, got {cert}")
        return cert
    leaf = x509.load_pem_x509_certificate(Path(cert).read_bytes())
    try:
        leaf.verify_directly_issued_by(ca_cert)
    except Exception as exc:  # ValueError / TypeError / InvalidSignature all mean "not ours"
        raise ValueError(f"{cert} was not issued by this CA ({ca_cert.subject.rfc4514_string()})") from exc
    return leaf.serial_number


def _subject_alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        if not re.fullmatch(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9._-]{0,252})", host):
            raise ValueError(f"host must be a DNS name or an IP address, got {host!r}")
        names.append(x509.DNSName(host))
    return names


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )


def _authority_key_id(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    encoding, private_format = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    return key.private_bytes(encoding, private_format, serialization.NoEncryption())


def _check_days(days: int) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or days < 0:
        raise ValueError(f"days must be a non-negative integer, got {days!r}")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


@contextmanager
def _ca_lock(ca_dir: Path) -> Iterator[None]:
    """Exclusive advisory lock so concurrent writers never lose an index entry or revocation."""
    with open(ca_dir / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
