"""Key advertisements: accepted only with the right CA, validity window, subject CN and signature."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from secagg_harness import NOW, Authority, Federation, clock

from fedquilt.secure_agg import InvalidSignature
from fedquilt.secure_agg.signing import CertificateVerifier, advertisement_payload, load_signing_key, sign

PAYLOAD = advertisement_payload(b"n" * 32, "site-00", b"c" * 32, b"s" * 32)


@pytest.mark.parametrize("site", ["site-00", "site-05"])  # site-00 is Ed25519, site-05 EC P-256
def test_valid_advertisement_verifies(federation: Federation, site: str) -> None:
    key, cert = federation.identities[site]  # type: ignore[index]
    CertificateVerifier(federation.ca.pem, clock).verify(site, cert, PAYLOAD, sign(key, PAYLOAD))


def test_wrong_signature(federation: Federation) -> None:
    key, cert = federation.identities["site-05"]  # type: ignore[index]
    other_key, _ = federation.identities["site-06"]  # type: ignore[index]
    verifier = CertificateVerifier(federation.ca.pem, clock)
    with pytest.raises(InvalidSignature, match="does not verify"):
        verifier.verify("site-05", cert, PAYLOAD, sign(other_key, PAYLOAD))
    with pytest.raises(InvalidSignature, match="does not verify"):
        verifier.verify("site-05", cert, PAYLOAD + b"x", sign(key, PAYLOAD))


def test_certificate_from_another_ca(federation: Federation, other_ca: Authority) -> None:
    key, cert = other_ca.issue("site-05")
    with pytest.raises(InvalidSignature, match="not issued by the federation CA"):
        CertificateVerifier(federation.ca.pem, clock).verify("site-05", cert, PAYLOAD, sign(key, PAYLOAD))


def test_same_name_impostor_ca(federation: Federation) -> None:
    impostor = Authority(federation.ca.name)  # same subject, different key
    key, cert = impostor.issue("site-05")
    with pytest.raises(InvalidSignature, match="not issued by the federation CA"):
        CertificateVerifier(federation.ca.pem, clock).verify("site-05", cert, PAYLOAD, sign(key, PAYLOAD))


def test_subject_cn_must_name_the_site(federation: Federation) -> None:
    key, cert = federation.identities["site-05"]  # type: ignore[index]
    with pytest.raises(InvalidSignature, match="does not name site 'site-07'"):
        CertificateVerifier(federation.ca.pem, clock).verify("site-07", cert, PAYLOAD, sign(key, PAYLOAD))


@pytest.mark.parametrize("days", [(-30, -1), (1, 30)])
def test_certificate_outside_validity(federation: Federation, days: tuple[int, int]) -> None:
    key, cert = federation.ca.issue("site-05", days=days)
    with pytest.raises(InvalidSignature, match="not valid at"):
        CertificateVerifier(federation.ca.pem, clock).verify("site-05", cert, PAYLOAD, sign(key, PAYLOAD))
    inside = NOW + dt.timedelta(days=(days[0] + days[1]) / 2)  # the injected clock decides, not the system's
    CertificateVerifier(federation.ca.pem, lambda: inside).verify("site-05", cert, PAYLOAD, sign(key, PAYLOAD))


def test_load_signing_key_round_trip() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    assert isinstance(load_signing_key(pem), ed25519.Ed25519PrivateKey)
