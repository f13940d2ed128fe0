"""The federation CA's revocation list as a site holds it: signature-checked, current, by serial.

The coordinator serves the CRL, but only the CA key signs it, so a coordinator can withhold a
newer CRL (a site then keeps the one it has until its ``next_update``) but cannot forge or shorten one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from .errors import InvalidSignature

__all__ = ["RevocationSet", "load_crl"]


@dataclass(frozen=True)
class RevocationSet:
    """Revoked serials of one CRL, with its number and validity window."""

    serials: frozenset[int]
    number: int
    last_update: datetime
    next_update: datetime | None

    def current(self, now: datetime) -> bool:
        """Whether this CRL is still within its validity window at ``now``."""
        return self.next_update is None or now <= self.next_update

    def newer_than(self, other: RevocationSet | None) -> bool:
        """Whether this CRL supersedes ``other`` (higher CRL number, or none held yet)."""
        return other is None or self.number > other.number


def load_crl(crl_pem: bytes, ca_cert: x509.Certificate) -> RevocationSet:
    """Parse a CRL PEM; :class:`InvalidSignature` unless ``ca_cert`` issued and signed it.

    ``cryptography`` parses a CRL lazily, so a corrupted one can fail at any field access (a bad
    version, an unknown extension, a broken entry); every such failure is the same refusal.
    """
    try:
        crl = x509.load_pem_x509_crl(crl_pem)
        public = ca_cert.public_key()
        signed = isinstance(public, (ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey)) and crl.is_signature_valid(public)
        if crl.issuer != ca_cert.subject or not signed:
            raise InvalidSignature("the revocation list is not signed by the federation CA")
        try:
            number = int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
        except x509.ExtensionNotFound:
            number = 0
        serials = frozenset(e.serial_number for e in crl)
        last_update, next_update = crl.last_update_utc, crl.next_update_utc
    except (ValueError, KeyError, TypeError, x509.InvalidVersion) as exc:
        raise InvalidSignature(f"the revocation list is not a well-formed PEM CRL: {type(exc).__name__}: {exc}") from None
    return RevocationSet(serials, number, last_update, next_update)
