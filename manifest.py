"""The published-manifest format: canonical bytes, and verification that any consumer (or site) runs.

Signed bytes (format ``fedquilt-manifest/2``): the manifest object without its ``signature``
member, serialised as RFC 8785 (JSON Canonicalization Scheme) JSON: members sorted by key, no
whitespace, strings UTF-8 with only ``"``, ``\\`` and control characters escaped, numbers in
ECMAScript ``Number.prototype.toString`` form (integers without a fraction, ``1e-7`` style
exponents). The signature is ECDSA P-256 / SHA-256 (DER, base64) by the coordinator's
certificate, embedded as PEM. Any JCS library in another language reproduces the bytes.
Format ``fedquilt-manifest/1`` (Python ``json.dumps(sort_keys=True)`` bytes) still verifies.

A manifest verifies only if its signer's certificate was issued by the federation CA, carries the
``coordinator`` role (subject OU: a site's or an admin's key cannot vouch for a version), is valid
now and at the manifest's ``created`` time, and is not on the CA-signed CRL the verifier holds.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping

from cryptography import x509
from cryptography.exceptions import InvalidSignature as _BadSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from .secure_agg.crl import RevocationSet, load_crl
from .secure_agg.errors import InvalidSignature
from .secure_agg.signing import CertificateVerifier, utc_now

__all__ = ["FORMAT", "COORDINATOR_ROLE", "ManifestError", "canonical", "canonical_json", "verify", "check_files"]

FORMAT = "fedquilt-manifest/2"
LEGACY_FORMAT = "fedquilt-manifest/1"
COORDINATOR_ROLE = "coordinator"
_SKEW = timedelta(minutes=5)


class ManifestError(Exception):
    """The manifest is malformed, tampered with, or not signed by the federation's coordinator."""


def _number(value: float) -> str:
    """ECMAScript Number.prototype.toString of a finite double (RFC 8785 §3.2.2.3)."""
    if not math.isfinite(value):
        raise ManifestError(f"manifest holds a non-finite number {value!r} (JSON cannot carry it)")
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    mantissa, _, exp = repr(abs(value)).partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).lstrip("0") or "0"
    point = len(whole.lstrip("0")) if whole.strip("0") else -(len(frac) - len(frac.lstrip("0")))
    n = point + (int(exp) if exp else 0)  # value = 0.digits × 10^n
    digits = digits.rstrip("0") or "0"
    k = len(digits)
    if k <= n <= 21:
        out = digits + "0" * (n - k)
    elif 0 < n <= 21:
        out = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        out = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        out = digits[0] + ("." + digits[1:] if k > 1 else "") + "e" + ("+" if e > 0 else "-") + str(abs(e))
    return sign + out


def canonical_json(value: Any) -> str:
    """RFC 8785 canonical JSON of ``value`` (dicts with string keys, lists, str, int, float, bool, None)."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 2**53 else _number(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(canonical_json(v) for v in value) + "]"
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise ManifestError("manifest object keys must be strings")
        items = sorted(value.items(), key=lambda kv: kv[0].encode("utf-16-be"))
        return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + canonical_json(v) for k, v in items) + "}"
    raise ManifestError(f"manifest holds a {type(value).__name__}, which JSON cannot carry")


def canonical(manifest: Mapping[str, Any]) -> bytes:
    """The exact bytes that are signed: the manifest without ``signature``, canonicalised for its format."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    if manifest.get("format") == LEGACY_FORMAT:
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return canonical_json(body).encode("utf-8")


def _created(manifest: Mapping[str, Any]) -> datetime | None:
    text = manifest.get("created")
    try:
        return datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        raise ManifestError(f"manifest 'created' is not an ISO time: {text!r}") from None


def verify(manifest: Mapping[str, Any], ca_pem: bytes, *, crl_pem: bytes | None = None,
           revocations: RevocationSet | None = None, clock: Callable[[], datetime] = utc_now) -> str:
    """Check the signature, the signer's coordinator role, validity and revocation; returns the signer's CN."""
    sig = manifest.get("signature")
    if not isinstance(sig, dict) or sig.get("alg") != "ecdsa-p256-sha256" or not isinstance(sig.get("cert"), str):
        raise ManifestError("manifest is not signed (or uses an unknown signature algorithm)")
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
        if crl_pem is not None:
            fetched = load_crl(crl_pem, ca)
            revocations = fetched if fetched.newer_than(revocations) else revocations
        cert_pem = sig["cert"].encode()
        cert = x509.load_pem_x509_certificate(cert_pem)
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
        signer = names[0] if len(names) == 1 else ""
        CertificateVerifier(ca_pem, clock, role=COORDINATOR_ROLE, revocations=revocations).certificate(signer, cert_pem)
    except InvalidSignature as exc:
        raise ManifestError(f"manifest signer is not the federation's coordinator: {exc}") from None
    except ValueError as exc:
        raise ManifestError(f"manifest signer's certificate is unreadable: {exc}") from None
    created = _created(manifest)
    if created is not None and created.tzinfo is not None and not (
            cert.not_valid_before_utc - _SKEW <= created <= min(cert.not_valid_after_utc, clock() + _SKEW)):
        raise ManifestError(f"manifest created {created.isoformat()} outside its signer's validity "
                            f"({cert.not_valid_before_utc.isoformat()} to {cert.not_valid_after_utc.isoformat()})")
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise ManifestError("manifest signer's key is not an EC key")
    try:
        public.verify(base64.b64decode(sig.get("value", "")), canonical(manifest), ec.ECDSA(hashes.SHA256()))
    except (_BadSignature, ValueError):
        raise ManifestError("manifest signature does not verify: the manifest was altered") from None
    return signer


def check_files(manifest: Mapping[str, Any], files: Mapping[str, bytes]) -> None:
    """Every file named by the manifest is present with the recorded hash, and nothing else."""
    expected = manifest.get("files", {})
    if set(expected) != set(files):
        raise ManifestError(f"files {sorted(files)} do not match the manifest's {sorted(expected)}")
    for name, body in files.items():
        if hashlib.sha256(body).hexdigest() != expected[name]["sha256"]:
            raise ManifestError(f"{name}: sha256 does not match the manifest")
