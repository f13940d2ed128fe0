"""Who is calling: a peer's certificate -> site id and role, checked against the CA and its CRL.

The TLS layer (``require_client_auth=True``) has already verified the client's chain by the time
a handler runs; ``Authorizer`` verifies it again itself (defence in depth: a misconfigured server
or a test channel must not turn into an identity bypass), then checks validity dates, the
revocation list and the role. Identity is the subject ``CN`` (site id) and ``OU`` (role) that
``pki.issue`` writes. No gRPC here: ``auth_context`` is any mapping shaped like
``grpc.ServicerContext.auth_context()``, and mapping these exceptions to status codes is the
server edge's job.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, NewType, Sequence

from cryptography import x509
from cryptography.x509.oid import NameOID

from .pki import CA_CERT, CRL_FILE, Role, common_name, read_crl, validate_name

SiteId = NewType("SiteId", str)
PEER_CERT_KEY = "x509_pem_cert"
_CACHE_LIMIT = 1024


class IdentityError(Exception):
    """Base class of every identity / authorisation failure."""


class Unauthenticated(IdentityError):
    """The caller has no acceptable certificate (missing, unparsable, foreign, expired or revoked)."""


class PermissionDenied(IdentityError):
    """The caller is authenticated but its role may not do this."""


class RevocationListError(IdentityError):
    """The CRL is missing, unparsable or not signed by the CA (fail closed: nobody gets in)."""


@dataclass(frozen=True)
class Peer:
    """An authenticated caller."""

    site_id: SiteId
    role: Role
    serial: int
    not_after: dt.datetime


def peer_from_auth_context(auth_context: Mapping[str, Sequence[bytes]]) -> Peer:
    """Parse the peer certificate in a gRPC auth context (no chain, date or CRL checks)."""
    return _peer_of(_certificate(auth_context))


class RevocationList:
    """The CA's CRL, signature-checked on load and reloaded whenever the file changes."""

    def __init__(self, path: Path, ca_cert: x509.Certificate) -> None:
        """Load ``path`` now; raises RevocationListError if it is missing or not signed by ``ca_cert``."""
        self._path = Path(path)
        self._ca_cert = ca_cert
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._serials: frozenset[int] = frozenset()
        self._refresh()

    def is_revoked(self, serial: int) -> bool:
        """Whether ``serial`` is on the current CRL (one ``stat`` per call; reload only on change)."""
        self._refresh()
        return serial in self._serials

    def _refresh(self) -> None:
        try:
            st = os.stat(self._path)
        except OSError as exc:
            raise RevocationListError(f"cannot read CRL {self._path}: {exc}") from exc
        stamp = (st.st_mtime_ns, st.st_ino, st.st_size)
        if stamp == self._stamp:
            return
        with self._lock:
            if stamp == self._stamp:
                return
            try:
                crl = read_crl(self._path, self._ca_cert)
            except (OSError, ValueError) as exc:
                raise RevocationListError(f"bad CRL {self._path}: {exc}") from exc
            self._serials = frozenset(entry.serial_number for entry in crl)
            self._stamp = stamp


class Authorizer:
    """Turns an auth context into a Peer allowed to do something, or raises an IdentityError."""

    def __init__(
        self,
        ca_cert: x509.Certificate,
        revocations: RevocationList,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc),
    ) -> None:
        """Trust ``ca_cert``, consult ``revocations`` on every call, read time from ``clock``."""
        self._ca_cert = ca_cert
        self._revocations = revocations
        self._clock = clock
        self._verified: dict[bytes, Peer] = {}  # PEM -> peer whose chain already verified

    @classmethod
    def from_ca_dir(cls, ca_dir: Path, clock: Callable[[], dt.datetime] | None = None) -> Authorizer:
        """An Authorizer for the CA in ``ca_dir`` (its ca.pem and crl.pem)."""
        ca_cert = x509.load_pem_x509_certificate((Path(ca_dir) / CA_CERT).read_bytes())
        revocations = RevocationList(Path(ca_dir) / CRL_FILE, ca_cert)
        return cls(ca_cert, revocations) if clock is None else cls(ca_cert, revocations, clock)

    def check(self, auth_context: Mapping[str, Sequence[bytes]], need: Role | set[Role]) -> Peer:
        """The calling Peer if it is authentic, current, unrevoked and has one of the ``need`` roles."""
        peer = self._authentic(auth_context)
        now = self._clock()
        if now > peer.not_after:
            raise Unauthenticated(f"certificate of {peer.site_id!r} expired at {peer.not_after.isoformat()}")
        if self._revocations.is_revoked(peer.serial):
            raise Unauthenticated(f"certificate {peer.serial:x} of {peer.site_id!r} is revoked")
        allowed = {need} if isinstance(need, Role) else need
        if peer.role not in allowed:
            wanted = ", ".join(sorted(r.value for r in allowed))
            raise PermissionDenied(f"{peer.site_id!r} has role {peer.role.value!r}; this needs {wanted}")
        return peer

    def _authentic(self, auth_context: Mapping[str, Sequence[bytes]]) -> Peer:
        pem = _pem(auth_context)
        cached = self._verified.get(pem)
        if cached is not None:
            return cached
        cert = _parse(pem)
        try:
            cert.verify_directly_issued_by(self._ca_cert)
        except Exception as exc:  # ValueError (issuer), TypeError (key type), InvalidSignature
            raise Unauthenticated(
                f"certificate of {cert.subject.rfc4514_string()!r} is not issued by the federation CA"
            ) from exc
        if self._clock() < cert.not_valid_before_utc:
            raise Unauthenticated(f"certificate {cert.serial_number:x} is not valid before {cert.not_valid_before_utc}")
        peer = _peer_of(cert)
        if len(self._verified) >= _CACHE_LIMIT:
            self._verified.clear()
        self._verified[pem] = peer
        return peer


def _pem(auth_context: Mapping[str, Sequence[bytes]]) -> bytes:
    values = auth_context.get(PEER_CERT_KEY)
    if not values:
        raise Unauthenticated("no client certificate presented (auth context has no x509_pem_cert)")
    return bytes(values[0])


def _parse(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise Unauthenticated(f"unparsable client certificate: {exc}") from exc


def _certificate(auth_context: Mapping[str, Sequence[bytes]]) -> x509.Certificate:
    return _parse(_pem(auth_context))


def _peer_of(cert: x509.Certificate) -> Peer:
    try:
        name = validate_name(common_name(cert))
    except ValueError as exc:
        raise Unauthenticated(f"certificate {cert.serial_number:x} has no valid site name: {exc}") from exc
    units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    try:
        (unit,) = units
        role = Role(unit.value)
    except ValueError as exc:
        values = [u.value for u in units]
        raise Unauthenticated(f"certificate {cert.serial_number:x} of {name!r} has no valid role OU: {values}") from exc
    return Peer(site_id=SiteId(name), role=role, serial=cert.serial_number, not_after=cert.not_valid_after_utc)
