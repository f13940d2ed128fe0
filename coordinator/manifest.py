"""Version manifests: what a published adapter is, where it came from, and who vouches for it.

The coordinator signs the canonical JSON of the manifest (sorted keys, no whitespace, without the
``signature`` field) with its certificate's key; a consumer verifies the signature with the
certificate embedded in the manifest, and that certificate against the federation CA.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime, timezone
from typing import Any, Mapping

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

FORMAT = "fedquilt-manifest/1"


class ManifestError(Exception):
    """The manifest is malformed, tampered with, or not signed by the federation."""


def canonical(manifest: Mapping[str, Any]) -> bytes:
    """The exact bytes that are signed."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def file_entries(files: Mapping[str, bytes]) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file of a version."""
    return {name: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for name, b in sorted(files.items())}


def build(files: Mapping[str, bytes], **facts: Any) -> dict[str, Any]:
    """An unsigned manifest: the files' hashes plus provenance facts (round, rule, contributors, …)."""
    return {"format": FORMAT, "created": datetime.now(timezone.utc).isoformat(), "files": file_entries(files), **facts}


def sign(manifest: dict[str, Any], key_pem: bytes, cert_pem: bytes) -> dict[str, Any]:
    """Return the manifest with an ECDSA-P256-SHA256 signature by the coordinator."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ManifestError("the coordinator key must be an EC key")
    value = key.sign(canonical(manifest), ec.ECDSA(hashes.SHA256()))
    signed = dict(manifest)
    signed["signature"] = {"alg": "ecdsa-p256-sha256", "cert": cert_pem.decode(), "value": base64.b64encode(value).decode()}
    return signed


def verify(manifest: Mapping[str, Any], ca_pem: bytes) -> str:
    """Check the signature and the signer's certificate; returns the signer's common name."""
    sig = manifest.get("signature")
    if not isinstance(sig, dict) or sig.get("alg") != "ecdsa-p256-sha256":
        raise ManifestError("manifest is not signed (or uses an unknown signature algorithm)")
    try:
        cert = x509.load_pem_x509_certificate(sig["cert"].encode())
        ca = x509.load_pem_x509_certificate(ca_pem)
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ManifestError(f"manifest signer's certificate is not from the federation CA: {exc}") from None
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise ManifestError("manifest signer's key is not an EC key")
    try:
        public.verify(base64.b64decode(sig["value"]), canonical(manifest), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise ManifestError("manifest signature does not verify: the manifest was altered") from None
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def check_files(manifest: Mapping[str, Any], files: Mapping[str, bytes]) -> None:
    """Every file named by the manifest is present with the recorded hash, and nothing else."""
    expected = manifest.get("files", {})
    if set(expected) != set(files):
        raise ManifestError(f"files {sorted(files)} do not match the manifest's {sorted(expected)}")
    for name, body in files.items():
        if hashlib.sha256(body).hexdigest() != expected[name]["sha256"]:
            raise ManifestError(f"{name}: sha256 does not match the manifest")
