"""Canonical encodings hashed or authenticated by the protocol, and the session id.

Every field is length-prefixed, so no two different field lists encode to the same bytes.
The session id commits to the server's nonce, the parameters, the vector layout and every
relayed key advertisement (sorted by site), so all sites that agree on it agree on all of these.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict
from typing import TYPE_CHECKING

from .layout import VectorLayout
from .params import SecAggParams

if TYPE_CHECKING:
    from .messages import KeyAdvertisement

__all__ = ["encode_fields", "canonical_params", "derive_session_id", "derive_graph_seed"]

_DOMAIN = b"fedquilt/secagg/v1"


def encode_fields(*fields: bytes) -> bytes:
    """Domain label followed by each field as 4-byte big-endian length + bytes."""
    out = bytearray(_DOMAIN)
    for field in fields:
        out += len(field).to_bytes(4, "big") + field
    return bytes(out)


def canonical_params(params: SecAggParams, layout: VectorLayout) -> bytes:
    """Deterministic bytes of the parameters and layout (sorted-key JSON)."""
    doc = {"params": asdict(params), "layout": [[name, list(shape)] for name, shape in layout.entries]}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def derive_session_id(nonce: bytes, params: SecAggParams, layout: VectorLayout,
                      advertisements: Iterable[KeyAdvertisement]) -> bytes:
    """SHA-256 over the nonce, parameters, layout and all advertisements sorted by site."""
    digest = hashlib.sha256(encode_fields(b"session", nonce, canonical_params(params, layout)))
    for ad in sorted(advertisements, key=lambda a: a.site):
        digest.update(encode_fields(b"ad", ad.site.encode(), ad.c_pk, ad.s_pk, hashlib.sha256(ad.cert_pem).digest()))
    return digest.digest()


def derive_graph_seed(session_id: bytes) -> bytes:
    """Seed of the SecAgg+ neighbour graph, fixed only once every site's fresh keys are in the session id.

    The coordinator picks the nonce before any site makes its keys, so it cannot grind the graph
    by trying nonces; all it can still vary is which advertisements it relays (see docs/threat-model.md).
    """
    return hashlib.sha256(encode_fields(b"graph", session_id)).digest()
