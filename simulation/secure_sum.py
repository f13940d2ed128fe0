"""The secure sum of a simulated round: ``secure_agg``'s client and server sessions, in memory.

Exactly the arithmetic of a deployment (the same ``default_params`` from the coordinator's
``[secagg]`` settings, the same division by the public weight scale Σ n_i, fixed point with
stochastic rounding, pairwise and self masks, Shamir shares, signed key advertisements), with the
messages handed from one state machine to the other in a loop instead of over gRPC. The site
identities are EC P-256 keys certified by a throw-away in-memory CA. ``plain_sum`` is the
plaintext twin (what ``coordinator.collect.PlainCollector`` computes).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Callable, Mapping, Sequence

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .. import secure_agg as sa

VectorsOf = Callable[[str, bytes], Mapping[str, np.ndarray]]
"""(site, session id) -> the site's vectors for this sum (sketch rules derive Ω from the session id)."""


def _name(cn: str, role: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if role is not None:  # peers accept key advertisements only from site-role certificates (CN=<site>, OU=site)
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role))
    return x509.Name(attrs)


class Identities:
    """A throw-away federation CA and one certified signing key per site."""

    def __init__(self, sites: Sequence[str]) -> None:
        now = dt.datetime.now(dt.timezone.utc)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (x509.CertificateBuilder().subject_name(_name("fedquilt simulation CA")).issuer_name(_name("fedquilt simulation CA"))
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).sign(ca_key, hashes.SHA256()))
        self.ca_pem = ca.public_bytes(serialization.Encoding.PEM)
        self.keys: dict[str, tuple[ec.EllipticCurvePrivateKey, bytes]] = {}
        for site in sites:
            key = ec.generate_private_key(ec.SECP256R1())
            cert = (x509.CertificateBuilder().subject_name(_name(site, "site")).issuer_name(ca.subject)
                    .public_key(key.public_key()).serial_number(x509.random_serial_number())
                    .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
                    .sign(ca_key, hashes.SHA256()))
            self.keys[site] = (key, cert.public_bytes(serialization.Encoding.PEM))


def mask_context(broadcast_bytes: bytes | None) -> bytes:
    """What both sides bind a later phase's masks to: H(the broadcast as sent), empty in phase 0."""
    return hashlib.sha256(broadcast_bytes).digest() if broadcast_bytes else b""


def secure_sum(ids: Identities, sites: Sequence[str], vectors_of: VectorsOf, weight_scale: float, clip: float,
               min_frac_bits: int, context: bytes = b"", threshold: int | None = None
               ) -> tuple[dict[str, np.ndarray], int, bytes]:
    """Σ over ``sites`` of their vectors (each divided by ``weight_scale``) through SecAgg; the clipped count; and
    the session id (the public randomness sketching rules derive Ω from, on both halves)."""
    cohort = sorted(sites)
    layout_vectors = {k: np.asarray(v, np.float64) for k, v in vectors_of(cohort[0], b"").items()}
    layout = sa.VectorLayout.of(layout_vectors)
    params = sa.default_params(len(cohort), clip, min_frac_bits=min_frac_bits,
                               threshold=min(threshold, len(cohort)) if threshold else None)
    server = sa.ServerSession([sa.SiteId(s) for s in cohort], params, layout, ca_cert_pem=ids.ca_pem,
                              mask_context=context)
    # Every simulated site runs the real client, with the floor the federation itself would announce (at least
    # two sites); a deployment's sites keep their own, stricter [privacy] floor.
    policy = sa.ClientPolicy(min_sites=min(len(cohort), 3) if len(cohort) >= 2 else 1)
    clients = {s: sa.ClientSession(sa.SiteId(s), ids.keys[s][0], ids.keys[s][1], ids.ca_pem, mask_context=context,
                                   policy=policy)
               for s in cohort}
    announce = server.start()
    for s in cohort:
        server.receive(sa.SiteId(s), clients[s].handle(announce))
    relay = server.relay_advertisements()
    for s in cohort:
        reply = clients[s].handle(relay)
        session_id = clients[s].session_id
        assert session_id is not None
        clients[s].set_input({k: np.asarray(v, np.float64) / weight_scale for k, v in vectors_of(s, session_id).items()})
        server.receive(sa.SiteId(s), reply)
    for s, routed in server.route_shares().items():
        server.receive(s, clients[s].handle(routed))
    consistency = server.request_consistency()  # each survivor signs the survivor set it was shown
    for s in consistency.survivors:
        server.receive(s, clients[s].handle(consistency))
    request = server.request_unmask()
    for s in request.survivors:
        server.receive(s, clients[s].handle(request))
    result = server.finish()
    clipped = sum(int(c.clipped or 0) for c in clients.values())
    assert server.session_id is not None
    return {k: np.asarray(v, np.float64) for k, v in result.sums.items()}, clipped, server.session_id


def plain_sum(sites: Sequence[str], vectors_of: VectorsOf) -> dict[str, np.ndarray]:
    """The plaintext twin: float32 uploads summed in float64, as the coordinator's collector does."""
    sums: dict[str, np.ndarray] = {}
    for s in sorted(sites):
        for k, v in vectors_of(s, b"").items():
            value = np.asarray(v, np.float32)
            if k in sums:
                sums[k] += value
            else:
                sums[k] = value.astype(np.float64)
    return sums
