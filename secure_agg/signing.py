"""Key advertisements signed with the site's identity (mTLS) key and checked against the CA.

A site signs ``nonce || site || c_pk || s_pk`` with its certificate's private key (EC P-256
ECDSA-SHA256 or Ed25519). A peer accepts it only if the certificate was issued directly by
the federation CA, is valid now (injected clock), names the claimed site as its subject CN,
carries the required role as its subject OU (``site``: the coordinator's or an admin's
certificate cannot pose as a site), is not on the CA-signed revocation list the verifier holds,
and its public key verifies the signature. Any failure is :class:`InvalidSignature`. The same
checks cover the survivor-set signatures of the consistency stage (``survivors_payload``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime, timezone

from cryptography import x509
from cryptography.exceptions import InvalidSignature as _BadSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from .crl import RevocationSet
from .errors import InvalidSignature
from .transcript import encode_fields

__all__ = ["SigningKey", "Clock", "utc_now", "load_signing_key", "advertisement_payload", "survivors_payload", "sign",
           "CertificateVerifier", "SITE_ROLE"]

SITE_ROLE = "site"
"""Subject OU of a data site's certificate (see ``coordinator/pki.py``)."""

SigningKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """Default clock: the current UTC time."""
    return datetime.now(timezone.utc)


def load_signing_key(pem: bytes, password: bytes | None = None) -> SigningKey:
    """Load a site's identity private key (EC or Ed25519 PEM)."""
    key = serialization.load_pem_private_key(pem, password)
    if not isinstance(key, (ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)):
        raise ValueError(f"identity key must be EC or Ed25519, got {type(key).__name__}")
    return key


def advertisement_payload(nonce: bytes, site: str, c_pk: bytes, s_pk: bytes) -> bytes:
    """The bytes a key advertisement signs."""
    return encode_fields(b"advertise", nonce, site.encode(), c_pk, s_pk)


def survivors_payload(session_id: bytes, survivors: tuple[str, ...] | list[str]) -> bytes:
    """The bytes a site signs in the consistency stage: the session id and the survivor set it was shown."""
    return encode_fields(b"survivors", session_id, *(s.encode() for s in sorted(survivors)))


def sign(key: SigningKey, payload: bytes) -> bytes:
    """Sign ``payload`` (ECDSA-SHA256 for EC keys, pure Ed25519 otherwise)."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(payload, ec.ECDSA(hashes.SHA256()))
    return key.sign(payload)


def _within(cert: x509.Certificate, now: datetime, what: str) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise InvalidSignature(
            f"{what} is not valid at {now.isoformat()} "
            f"(valid {cert.not_valid_before_utc.isoformat()} to {cert.not_valid_after_utc.isoformat()})"
        )


class CertificateVerifier:
    """Checks site certificates against one federation CA and verifies their signatures."""

    def __init__(self, ca_cert_pem: bytes, clock: Clock = utc_now, *, role: str | None = SITE_ROLE,
                 revocations: RevocationSet | None = None) -> None:
        self._ca = x509.load_pem_x509_certificate(ca_cert_pem)
        self._clock = clock
        self._role = role
        self.revocations = revocations
        """The CA-signed revocation list in force (None: no CRL held, nothing is treated as revoked)."""
        self._trusted: dict[tuple[str, bytes], x509.Certificate] = {}

    @property
    def ca(self) -> x509.Certificate:
        """The federation CA certificate."""
        return self._ca

    def certificate(self, site: str, cert_pem: bytes) -> x509.Certificate:
        """The parsed certificate of ``site`` after checking issuer, validity and subject CN."""
        key = (site, hashlib.sha256(cert_pem).digest())
        if key in self._trusted:
            return self._unrevoked(site, self._trusted[key])
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            cert.verify_directly_issued_by(self._ca)
        except (ValueError, TypeError, _BadSignature) as exc:
            raise InvalidSignature(f"certificate of site {site!r} is not issued by the federation CA: {exc}") from None
        now = self._clock()
        _within(self._ca, now, "federation CA certificate")
        _within(cert, now, f"certificate of site {site!r}")
        names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if names != [site]:
            raise InvalidSignature(f"certificate subject CN {names} does not name site {site!r}")
        if self._role is not None:
            units = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
            if units != [self._role]:
                raise InvalidSignature(f"certificate of {site!r} has role {units}, not [{self._role!r}]")
        self._trusted[key] = cert
        return self._unrevoked(site, cert)

    def _unrevoked(self, site: str, cert: x509.Certificate) -> x509.Certificate:
        if self.revocations is not None and cert.serial_number in self.revocations.serials:
            raise InvalidSignature(f"certificate {cert.serial_number:x} of {site!r} is revoked")
        return cert

    def verify(self, site: str, cert_pem: bytes, payload: bytes, signature: bytes) -> None:
        """Raise :class:`InvalidSignature` unless ``site``'s certificate signed ``payload``."""
        public = self.certificate(site, cert_pem).public_key()
        try:
            if isinstance(public, ec.EllipticCurvePublicKey):
                public.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
            elif isinstance(public, ed25519.Ed25519PublicKey):
                public.verify(signature, payload)
            else:
                raise InvalidSignature(f"site {site!r} has an unsupported key type {type(public).__name__}")
        except _BadSignature:
            raise InvalidSignature(f"signature of site {site!r} does not verify") from None
