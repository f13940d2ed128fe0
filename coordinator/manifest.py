"""Version manifests: what a published adapter is, where it came from, and who vouches for it.

The coordinator signs the canonical form of the manifest (RFC 8785 JSON without the ``signature``
member; see ``manifest.py`` and docs/secure-aggregation.md § Manifests) with its certificate's
key. Verification lives in ``fedquilt.manifest`` so that consumers and agents need nothing
from the coordinator package; it is re-exported here for the coordinator's own callers.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime, timezone
from typing import Any, Mapping

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..manifest import FORMAT, ManifestError, canonical, check_files, verify

__all__ = ["FORMAT", "ManifestError", "canonical", "file_entries", "build", "max_epsilon", "sign", "verify",
           "check_files"]


def file_entries(files: Mapping[str, bytes]) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file of a version."""
    return {name: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for name, b in sorted(files.items())}


def build(files: Mapping[str, bytes], **facts: Any) -> dict[str, Any]:
    """An unsigned manifest: the files' hashes plus provenance facts (round, rule, contributors, …)."""
    return {"format": FORMAT, "created": datetime.now(timezone.utc).isoformat(), "files": file_entries(files), **facts}


def max_epsilon(facts: Mapping[str, Any]) -> float | None:
    """The largest ε a version's manifest reports (site-level, or the worst site's record-level DP); None: no DP."""
    values = [float(p["epsilon"]) for p in (facts.get("privacy") or {}).values()
              if isinstance(p, Mapping) and isinstance(p.get("epsilon"), (int, float))]
    site_level = facts.get("site_level_privacy") or {}
    if isinstance(site_level.get("epsilon"), (int, float)):
        values.append(float(site_level["epsilon"]))
    return round(max(values), 4) if values else None


def sign(manifest: dict[str, Any], key_pem: bytes, cert_pem: bytes) -> dict[str, Any]:
    """Return the manifest with an ECDSA-P256-SHA256 signature by the coordinator."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ManifestError("the coordinator key must be an EC key")
    value = key.sign(canonical(manifest), ec.ECDSA(hashes.SHA256()))
    signed = dict(manifest)
    signed["signature"] = {"alg": "ecdsa-p256-sha256", "cert": cert_pem.decode(), "value": base64.b64encode(value).decode()}
    return signed
