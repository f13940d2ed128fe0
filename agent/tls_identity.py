"""Local checks of a TLS identity (certificate, key, CA) before anything connects or listens.

The same checks serve ``fedquilt agent check`` / ``coordinator check``, the start of both processes,
and the agent's connection diagnosis: each failure is one ``IdentityProblem`` naming the file, the
fact and the fix, so "Failed to bind to address" or "unsupported certificate purpose" never reach a user.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_EKU = {"coordinator": ExtendedKeyUsageOID.SERVER_AUTH, "site": ExtendedKeyUsageOID.CLIENT_AUTH,
        "admin": ExtendedKeyUsageOID.CLIENT_AUTH}


class IdentityProblem(ValueError):
    """A certificate, key or CA file that cannot work for the role it is given to."""


@dataclass(frozen=True)
class Identity:
    """What a certificate says about its holder."""

    name: str
    role: str
    not_after: dt.datetime
    hosts: tuple[str, ...]


def describe(cert: x509.Certificate) -> Identity:
    """CN, OU (role), expiry and subjectAltNames of ``cert``."""
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        hosts = tuple([str(n) for n in san.get_values_for_type(x509.DNSName)]
                      + [str(ip) for ip in san.get_values_for_type(x509.IPAddress)])
    except x509.ExtensionNotFound:
        hosts = ()
    return Identity(str(cn[0].value) if cn else "", str(ou[0].value) if ou else "", cert.not_valid_after_utc, hosts)


def _load_cert(path: Path, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise IdentityProblem(f"{what} {path} does not exist") from None
    except ValueError as exc:
        raise IdentityProblem(f"{what} {path} is not a PEM certificate ({exc})") from None


def host_matches(hosts: Sequence[str], host: str) -> bool:
    """Whether a certificate with subjectAltNames ``hosts`` is valid for ``host`` (exact names, IPs)."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
        return any(_same_ip(h, ip) for h in hosts)
    except ValueError:
        return host.lower() in {h.lower() for h in hosts}


def _same_ip(text: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        return ipaddress.ip_address(text) == ip
    except ValueError:
        return False


def check_identity(ca: Path, cert: Path, key: Path, role: str | None, *, host: str | None = None,
                   clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc)) -> Identity:
    """The identity in ``cert`` if it is issued by ``ca``, current, of ``role`` (None: any), matches ``key`` (and ``host``)."""
    ca_cert, leaf = _load_cert(ca, "CA certificate"), _load_cert(cert, "certificate")
    try:
        leaf.verify_directly_issued_by(ca_cert)
    except Exception:  # ValueError (issuer), TypeError (key type), InvalidSignature
        raise IdentityProblem(f"{cert} is not issued by the CA in {ca} (it names issuer "
                              f"{leaf.issuer.rfc4514_string()!r}); use the CA that issued it, or issue a new "
                              "certificate with `fedquilt certs issue`") from None
    me = describe(leaf)
    now = clock()
    if now > leaf.not_valid_after_utc:
        raise IdentityProblem(f"{cert} ({me.name}) expired at {leaf.not_valid_after_utc:%Y-%m-%d %H:%M}Z; "
                              f"run `fedquilt certs rotate --name {me.name}`")
    if now < leaf.not_valid_before_utc:
        raise IdentityProblem(f"{cert} ({me.name}) is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M}Z "
                              "(check this machine's clock)")
    if role is not None and me.role != role:
        raise IdentityProblem(f"{cert} ({me.name}) has role {me.role or 'none'}; this needs a {role} certificate: "
                              f"`fedquilt certs issue --role {role}`")
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if _EKU.get(role or me.role, ExtendedKeyUsageOID.CLIENT_AUTH) not in eku:
            raise IdentityProblem(f"{cert} lacks the key usage a {role or me.role} certificate needs; issue it "
                                  f"again with `fedquilt certs issue --role {role or me.role}`")
    except x509.ExtensionNotFound:
        pass
    _check_key(cert, leaf, key)
    if host is not None and not host_matches(me.hosts, host):
        raise IdentityProblem(f"{cert} ({me.name}) is not valid for {host!r}: its names are {', '.join(me.hosts) or 'none'}; "
                              f"issue it with `--host {host}` or connect with --server-name set to one of them")
    return me


def _check_key(cert: Path, leaf: x509.Certificate, key: Path) -> None:
    try:
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    except FileNotFoundError:
        raise IdentityProblem(f"private key {key} does not exist") from None
    except (ValueError, TypeError) as exc:
        raise IdentityProblem(f"{key} is not an unencrypted PEM private key ({exc})") from None
    mine = private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    theirs = leaf.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if mine != theirs:
        raise IdentityProblem(f"private key {key} does not match certificate {cert}; give the key written beside it "
                              "by `fedquilt certs issue` (NAME.key next to NAME.pem)")
