"""A corrupted revocation list is refused as one error, whatever byte was changed.

``cryptography`` parses a CRL lazily: a flipped byte can surface as ``InvalidVersion``, ``KeyError`` or an
ASN.1 ``ValueError`` only when a field is read (seen once in CI: "5 is not a valid CRL version" escaped
``load_crl``). Every single-character change of a real CA-signed CRL must be :class:`InvalidSignature`.
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedquilt import secure_agg as sa

NOW = datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc)


def _ca_and_crl() -> tuple[x509.Certificate, bytes]:
    key = ec.derive_private_key(0x5EED, ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key()).serial_number(1)
          .not_valid_before(NOW).not_valid_after(NOW + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    revoked = x509.RevokedCertificateBuilder().serial_number(77).revocation_date(NOW).build()
    crl = (x509.CertificateRevocationListBuilder().issuer_name(name).last_update(NOW)
           .next_update(NOW + datetime.timedelta(days=1)).add_revoked_certificate(revoked)
           .add_extension(x509.CRLNumber(3), critical=False).sign(key, hashes.SHA256()))
    return ca, crl.public_bytes(serialization.Encoding.PEM)


def test_the_genuine_crl_loads() -> None:
    ca, pem = _ca_and_crl()
    held = sa.load_crl(pem, ca)
    assert held.serials == frozenset({77}) and held.number == 3


def _signed(pem: bytes) -> bytes | None:
    """The signed part (TBSCertList) of a PEM CRL, or None if it does not parse.

    A change outside it (unused base64 padding bits, the signature BIT STRING's unused-bits octet, which
    newer ``cryptography`` releases accept) leaves the very same signed revocation list.
    """
    try:
        return x509.load_pem_x509_crl(pem).tbs_certlist_bytes
    except Exception:  # noqa: BLE001 - anything unparsable is a changed CRL
        return None


def test_every_single_character_change_is_refused_as_invalid_signature() -> None:
    """Every change of the signed content is refused (a change that leaves it byte-identical is the same CRL)."""
    ca, pem = _ca_and_crl()
    original = _signed(pem)
    escaped: dict[str, int] = {}
    for i in range(len(pem)):
        c = pem[i:i + 1]
        if not c.isalnum():
            continue
        for r in (b"A", b"B", b"g", b"z", b"0", b"/"):
            if r == c:
                continue
            forged = pem[:i] + r + pem[i + 1:]
            if _signed(forged) == original:
                continue  # the signed revocation list is byte-identical
            try:
                sa.load_crl(forged, ca)
            except sa.InvalidSignature:
                continue
            except Exception as exc:  # noqa: BLE001 - the test collects what escapes
                escaped[type(exc).__name__] = escaped.get(type(exc).__name__, 0) + 1
            else:
                escaped["accepted"] = escaped.get("accepted", 0) + 1
    assert escaped == {}
