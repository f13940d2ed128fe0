"""The documented way to drive a round: four sites, in memory, one dropping after sharing keys."""

from __future__ import annotations

import numpy as np
from secagg_harness import Federation

from fedquilt.secure_agg import ClientSession, ServerSession, SiteId, VectorLayout, default_params


def test_four_site_round_as_documented(federation: Federation) -> None:
    ca_pem = federation.ca.pem
    sites = [SiteId("site-10"), SiteId("site-11"), SiteId("site-12"), SiteId("site-13")]  # certificate CNs
    x = {s: {"A": np.full((2, 3), i + 1.0, np.float32), "n": np.array([10.0 * (i + 1)])} for i, s in enumerate(sites)}
    params = default_params(len(sites), clip=100.0)                    # t = 3, full graph, Z_2^32
    layout = VectorLayout.of(x[sites[0]])                              # names sorted: "A", "n"

    server = ServerSession(sites, params, layout, ca_cert_pem=ca_pem)
    clients = {s: ClientSession(s, *federation.identities[s], ca_pem, vectors=x[s]) for s in sites}

    announce = server.start()                                          # 0: cohort, nonce, params
    for s in announce.cohort:
        server.receive(s, clients[s].handle(announce))                 # 1: signed key advertisements
    relay = server.relay_advertisements()
    for ad in relay.advertisements:
        server.receive(ad.site, clients[ad.site].handle(relay))        # 2: encrypted shares
    for s, routed in server.route_shares().items():
        if s != sites[2]:                                              # site-12 drops before masking
            server.receive(s, clients[s].handle(routed))               # 3: masked inputs, summed on arrival
    consistency = server.request_consistency()                         # survivors + dropped
    for s in consistency.survivors:
        server.receive(s, clients[s].handle(consistency))              # 4: each signs the survivor set it saw
    request = server.request_unmask()                                  # the same lists + >= t signatures
    for s, _ in request.signatures:
        server.receive(s, clients[s].handle(request))                  # 5: revealed shares
    result = server.finish()

    assert result.contributors == (sites[0], sites[1], sites[3]) and result.dropped == (sites[2],)
    assert np.allclose(result.sums["A"], 7.0) and np.allclose(result.sums["n"], 70.0)
