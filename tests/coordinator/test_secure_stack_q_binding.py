"""A coordinator that sends a different Q to one site gets no valid unmasking.

The second secure sum of ``secure-stack`` binds every pairwise mask to H(Q) as the site received
it (``mask_context``). Here a test double of the server runs the real ``secure_agg`` sessions and
the real rule, but hands site-2 a different orthonormal basis Q'. The honest run recovers the plain
sum exactly; the cheating run's "sum" is noise (the masks no longer cancel).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from fedquilt import secure_agg as sa
from fedquilt.coordinator.pki import Role, init_ca, issue
from fedquilt.proto import codec
from fedquilt.strategies.base import Broadcast, LocalUpdate, RoundContext
from fedquilt.strategies.lora import LoraFactors
from fedquilt.strategies.registry import make_rule

SITES = ["site-0", "site-1", "site-2"]
SHAPES = {"layer.q": (12, 10)}


def _identities(tmp: Path) -> tuple[bytes, dict[str, tuple[bytes, bytes]]]:
    init_ca(tmp / "ca")
    out = {}
    for s in SITES:
        p = issue(tmp / "ca", tmp / s, s, Role.SITE)
        out[s] = (p.cert.read_bytes(), p.key.read_bytes())
    return (tmp / "ca" / "ca.pem").read_bytes(), out


def _secure_sum(vectors: dict[str, dict[str, np.ndarray]], contexts: dict[str, bytes], server_context: bytes,
                ca: bytes, ids: dict[str, tuple[bytes, bytes]]) -> dict[str, np.ndarray]:
    layout = sa.VectorLayout.of(vectors[SITES[0]])
    server = sa.ServerSession(SITES, sa.default_params(3, 8.0, min_frac_bits=24), layout, ca_cert_pem=ca,
                              mask_context=server_context)
    clients = {s: sa.ClientSession(sa.SiteId(s), sa.load_signing_key(ids[s][1]), ids[s][0], ca, vectors=vectors[s],
                                   mask_context=contexts[s]) for s in SITES}
    announce = server.start()
    for s in SITES:
        server.receive(s, clients[s].handle(announce))
    relay = server.relay_advertisements()
    for s in SITES:
        server.receive(s, clients[s].handle(relay))
    for s, routed in server.route_shares().items():
        server.receive(s, clients[s].handle(routed))
    consistency = server.request_consistency()
    for s in consistency.survivors:
        server.receive(s, clients[s].handle(consistency))
    request = server.request_unmask()
    for s, _ in request.signatures:
        server.receive(s, clients[s].handle(request))
    return {k: np.asarray(v) for k, v in server.finish().sums.items()}


def test_a_different_q_for_one_site_yields_noise_not_a_sum(tmp_path: Path) -> None:
    ca, ids = _identities(tmp_path)
    g = torch.Generator().manual_seed(0)
    rule = make_rule("secure-stack", {"float64": True, "passes": 2})  # the Q broadcast exists in the two-pass variant
    ctx = RoundContext(round=1, shapes=SHAPES, ranks={s: 2 for s in SITES}, session=b"s" * 32, params={})
    updates = {s: LocalUpdate(adapter={"layer.q": LoraFactors(A=torch.randn(2, 10, generator=g) * 0.1,
                                                              B=torch.randn(12, 2, generator=g) * 0.1, scaling=1.0)})
               for s in SITES}
    scale = 300.0  # the agents' public weight scale keeps n-weighted values inside the clip range
    phase0 = {s: {k: v / scale for k, v in rule.vectors(0, updates[s], 100, ctx, None).items()} for s in SITES}
    sums0 = {k: sum(phase0[s][k] for s in SITES) for k in phase0[SITES[0]]}
    q = rule.combine(0, sums0, ctx, None)
    assert isinstance(q, Broadcast)

    def phase1(broadcast: Broadcast) -> dict[str, dict[str, np.ndarray]]:
        return {s: {k: v / scale for k, v in rule.vectors(1, updates[s], 100, ctx, broadcast).items()} for s in SITES}

    honest_bytes = codec.encode_tensors(dict(q.tensors))
    h = hashlib.sha256(honest_bytes).digest()
    honest = phase1(q)
    plain = {k: sum(honest[s][k] for s in SITES) for k in honest[SITES[0]]}
    got = _secure_sum(honest, {s: h for s in SITES}, h, ca, ids)
    for k in plain:
        assert np.allclose(got[k], plain[k], atol=1e-5), k

    # The cheat: site-2 receives Q' (another orthonormal basis of the same width).
    other = {k: np.linalg.qr(np.random.default_rng(1).standard_normal(v.shape))[0] if v.ndim == 2 else v
             for k, v in q.tensors.items()}
    forged = Broadcast(tensors=other)
    h_forged = hashlib.sha256(codec.encode_tensors(other)).digest()
    cheated_inputs = {**honest, "site-2": phase1(forged)["site-2"]}
    cheated = _secure_sum(cheated_inputs, {"site-0": h, "site-1": h, "site-2": h_forged}, h, ca, ids)
    errors = [np.abs(cheated[k] - plain[k]).max() for k in plain if plain[k].size > 1]
    assert min(errors) > 1.0, f"unmasking still produced something close to a sum: {errors}"
