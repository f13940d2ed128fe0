"""Key advertisements signed with the site's identity (mTLS) key and checked against the CA.

A site signs ``nonce || site || c_pk || s_pk`` with its certificate's private key (EC P-256
ECDSA-SHA256 or Ed25519). A peer accepts it only if the certificate was issued directly by
the federation CA, is valid now (injected clock), names the claimed site as its subject CN,
and its public key verifies the signature. Any failure is :class:`InvalidSignature`.
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

from .errors import InvalidSignature
from .transcript import encode_fields

__all__ = ["SigningKey", "Clock", "utc_now", "load_signing_key", "advertisement_payload", "sign", "CertificateVerifier"]

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

    def __init__(self, ca_cert_pem: bytes, clock: Clock = utc_now) -> None:
        self._ca = x509.load_pem_x509_certificate(ca_cert_pem)
        self._clock = clock
        self._trusted: dict[tuple[str, bytes], x509.Certificate] = {}

    def certificate(self, site: str, cert_pem: bytes) -> x509.Certificate:
        """The parsed certificate of ``site`` after checking issuer, validity and subject CN."""
        key = (site, hashlib.sha256(cert_pem).digest())
        if key in self._trusted:
            return self._trusted[key]
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
        self._trusted[key] = cert
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
