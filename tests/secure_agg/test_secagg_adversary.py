"""A coordinator that misbehaves, played in memory: every attack of issue 11 that a site must stop itself.

The server here is a ``ServerSession`` without a CA (a malicious coordinator checks nothing) or
messages forged by hand; the defence under test is always the honest sites' ``ClientSession``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from secagg_harness import NOW, Authority, Federation, clock, site_names

from fedquilt.secure_agg import (
    Announce, ClientPolicy, ClientSession, ConsistencyRequest, InvalidSignature, PolicyRefusal, RevealedShares,
    SecAggParams, ServerSession, SiteId, Stage, ThresholdNotMet, UnmaskRequest, VectorLayout, load_crl,
)

A, B, C, D = (SiteId(f"site-{i:02d}") for i in range(4))
LAYOUT = VectorLayout((("x", (4,)),))


def _vectors(i: int) -> dict[str, np.ndarray]:
    return {"x": np.full(4, 0.1 * (i + 1))}


def _clients(fed: Federation, sites: list[SiteId], **kw: object) -> dict[SiteId, ClientSession]:
    return {s: fed.client(s, _vectors(i), **kw) for i, s in enumerate(sites)}


def _announce(sites: list[SiteId], params: SecAggParams) -> Announce:
    return Announce(b"n" * 32, tuple(sites), params, LAYOUT)


# (a) the coordinator builds a secure sum over too few sites ------------------------------------
@pytest.mark.parametrize("n", [1, 2])
def test_sum_over_fewer_than_the_site_minimum_is_refused_before_any_key(federation: Federation, n: int) -> None:
    """All but one or two cohort sites missed DECLARE_LAYOUT; the coordinator announces a sum over the rest."""
    sites = site_names(n)
    announce = _announce(sites, SecAggParams(threshold=n, clip=1.0, max_sites=n))
    for site, client in _clients(federation, sites).items():
        with pytest.raises(PolicyRefusal, match=f"cohort of {n} sites is below this site's minimum of 3"):
            client.handle(announce)
        assert client.stage == Stage.FAILED and client.session_id is None  # no key was advertised


def test_the_federation_minimum_raises_the_floor_never_lowers_it(federation: Federation) -> None:
    sites = site_names(3)
    announce = _announce(sites, SecAggParams(threshold=2, clip=1.0, max_sites=3))
    strict = federation.client(A, _vectors(0), policy=ClientPolicy().at_least(4))
    with pytest.raises(PolicyRefusal, match="minimum of 4"):
        strict.handle(announce)
    lenient = ClientPolicy().at_least(1)
    assert lenient.min_sites == 3


def test_sites_dropping_mid_sum_below_the_floor_stop_every_honest_site(federation: Federation) -> None:
    """Five announced, three vanish before sharing: the two left refuse to mask; nothing can be decoded."""
    sites = site_names(5)
    params = SecAggParams(threshold=3, clip=1.0, max_sites=5)
    server = ServerSession(sites, params, LAYOUT)  # no CA: a coordinator that checks nothing
    clients = _clients(federation, sites)
    announce = server.start()
    for s in sites:
        server.receive(s, clients[s].handle(announce))
    relay = server.relay_advertisements()
    for s in sites:
        server.receive(s, clients[s].handle(relay))
    # The coordinator pretends only A and B shared: it routes a two-site relay to them.
    routes = server.route_shares()
    for s in (A, B):
        forged = dataclasses.replace(routes[s], participants=(A, B), shares=tuple(
            share for share in routes[s].shares if share.sender in (A, B)))
        with pytest.raises((PolicyRefusal, ThresholdNotMet)):
            clients[s].handle(forged)
        assert clients[s].stage == Stage.FAILED


# (b) key advertisements from certificates that are not sites' ---------------------------------
def _revoked_crl(ca: Authority, serial: int) -> bytes:
    from cryptography.hazmat.primitives import serialization

    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject)
           .last_update(NOW - dt.timedelta(days=1)).next_update(NOW + dt.timedelta(days=30))
           .add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                    .revocation_date(NOW - dt.timedelta(hours=1)).build())
           .add_extension(x509.CRLNumber(2), critical=False)
           .sign(ca.key, hashes.SHA256()))
    return crl.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("kind", ["coordinator", "admin", "no-role", "revoked", "expired", "foreign-ca"])
def test_advertisement_from_a_non_site_certificate_is_refused(kind: str) -> None:
    """The coordinator joins as a sybil "site" with a certificate it holds: every honest peer refuses."""
    ca = Authority()
    ids = {s: ca.issue(s) for s in (A, B, C)}
    revocations = None
    if kind in ("coordinator", "admin"):
        ids[D] = ca.issue(D, role=kind)
    elif kind == "no-role":
        ids[D] = ca.issue(D, role=None)
    elif kind == "expired":
        ids[D] = ca.issue(D, days=(-30, -1))
    elif kind == "foreign-ca":
        ids[D] = Authority(name="another CA").issue(D)
    else:
        ids[D] = ca.issue(D)
        serial = x509.load_pem_x509_certificate(ids[D][1]).serial_number
        revocations = load_crl(_revoked_crl(ca, serial), ca.cert)
    fed = Federation(ca, ids)
    sites = [A, B, C, D]
    server = ServerSession(sites, SecAggParams(threshold=3, clip=1.0, max_sites=4), LAYOUT)
    clients = {s: fed.client(s, _vectors(i), revocations=revocations) for i, s in enumerate(sites)}
    announce = server.start()
    for s in sites:
        server.receive(s, clients[s].handle(announce))
    relay = server.relay_advertisements()
    for s in (A, B, C):
        with pytest.raises(InvalidSignature, match={"coordinator": "role", "admin": "role", "no-role": "role",
                                                    "revoked": "revoked", "expired": "not valid at",
                                                    "foreign-ca": "not issued by the federation CA"}[kind]):
            clients[s].handle(relay)
        assert clients[s].stage == Stage.FAILED


def test_crl_not_signed_by_the_ca_is_refused() -> None:
    ca, other = Authority(), Authority(name="coordinator-made CA")
    with pytest.raises(InvalidSignature, match="not signed by the federation CA"):
        load_crl(_revoked_crl(other, 1), ca.cert)


# (c) SecAgg+: share threshold, graph grinding, inconsistent survivor lists ---------------------
@pytest.mark.parametrize("shares", [1, 2, 3])
def test_secagg_plus_share_threshold_at_or_below_half_a_neighbourhood_is_refused(federation: Federation,
                                                                                shares: int) -> None:
    sites = site_names(12)
    params = SecAggParams(threshold=7, clip=1.0, max_sites=12, degree=6, share_threshold=shares)
    with pytest.raises(PolicyRefusal, match=f"share threshold {shares} is at or below half of a neighbourhood of 7"):
        federation.client(A, _vectors(0)).handle(_announce(sites, params))


def test_secagg_plus_majority_share_threshold_is_accepted(federation: Federation) -> None:
    sites = site_names(12)
    params = SecAggParams(threshold=7, clip=1.0, max_sites=12, degree=6, share_threshold=4)
    assert federation.client(A, _vectors(0)).handle(_announce(sites, params)).site == A


def test_secagg_plus_graph_does_not_follow_the_nonce(federation: Federation) -> None:
    """A coordinator grinding nonces cannot place a victim: the graph is fixed by every site's fresh keys."""
    sites = site_names(12)
    params = SecAggParams(threshold=7, clip=1.0, max_sites=12, degree=4, share_threshold=3)
    graphs = set()
    for _ in range(3):
        server = ServerSession(sites, params, LAYOUT, nonce=b"the same ground nonce, twice!!!!")
        clients = _clients(federation, sites)
        announce = server.start()
        for s in sites:
            server.receive(s, clients[s].handle(announce))
        relay = server.relay_advertisements()
        for s in sites:
            server.receive(s, clients[s].handle(relay))
        holders = {share.sender for share in server.route_shares()[A].shares} | {A}
        graphs.add(frozenset(holders))
    assert len(graphs) >= 2  # same nonce, different graphs: the nonce does not decide the neighbours


def _to_consistency(fed: Federation, n: int = 4) -> tuple[ServerSession, dict[SiteId, ClientSession],
                                                           ConsistencyRequest]:
    sites = site_names(n)
    server = ServerSession(sites, SecAggParams(threshold=3, clip=1.0, max_sites=n), LAYOUT)
    clients = _clients(fed, sites)
    announce = server.start()
    for s in sites:
        server.receive(s, clients[s].handle(announce))
    relay = server.relay_advertisements()
    for s in sites:
        server.receive(s, clients[s].handle(relay))
    for s, routed in server.route_shares().items():
        server.receive(s, clients[s].handle(routed))
    return server, clients, server.request_consistency()


def test_different_survivor_lists_shown_to_two_sites_reveal_nothing(federation: Federation) -> None:
    """The coordinator tells A that D dropped (to get D's mask key) and B, C, D that D survived (to get
    D's self-mask seed). Each signs what it saw; A never sees enough signatures on its set and reveals nothing."""
    server, clients, honest = _to_consistency(federation)
    lie = dataclasses.replace(honest, survivors=(A, B, C), dropped=(D,))
    signatures = {A: clients[A].handle(lie)}
    signatures.update({s: clients[s].handle(honest) for s in (B, C, D)})
    everyone = tuple(sorted((s, m.signature) for s, m in signatures.items()))
    to_a = UnmaskRequest(honest.session_id, lie.survivors, lie.dropped, everyone)
    with pytest.raises(InvalidSignature, match="did not sign the survivor set this site was shown"):
        clients[A].handle(to_a)
    assert clients[A].stage == Stage.FAILED


def test_unmask_with_too_few_signatures_or_other_lists_reveals_nothing(federation: Federation) -> None:
    server, clients, honest = _to_consistency(federation)
    sigs = {s: clients[s].handle(honest).signature for s in (A, B, C, D)}
    only_two = UnmaskRequest(honest.session_id, honest.survivors, honest.dropped, ((A, sigs[A]), (B, sigs[B])))
    with pytest.raises(ThresholdNotMet, match="2 survivors signed the survivor set, need 3"):
        clients[A].handle(only_two)
    swapped = UnmaskRequest(honest.session_id, (A, B, C), (D,), tuple(sorted(sigs.items())))
    with pytest.raises(Exception, match="other survivors than the set it signed"):
        clients[B].handle(swapped)
    full = UnmaskRequest(honest.session_id, honest.survivors, honest.dropped, tuple(sorted(sigs.items())))
    assert isinstance(clients[C].handle(full), RevealedShares)  # the honest request still works


def test_honest_consistency_round_decodes_the_sum(federation: Federation) -> None:
    server, clients, honest = _to_consistency(federation)
    for s in honest.survivors:
        server.receive(s, clients[s].handle(honest))
    request = server.request_unmask()
    assert [s for s, _ in request.signatures] == [A, B, C, D]
    for s, _ in request.signatures:
        server.receive(s, clients[s].handle(request))
    result = server.finish()
    assert np.allclose(result.sums["x"], 0.1 + 0.2 + 0.3 + 0.4, atol=1e-4)


# (d) multi-phase: a site that drops between the sums -----------------------------------------
def test_second_phase_without_every_first_phase_contributor_reveals_nothing(federation: Federation) -> None:
    """Phase 0 summed A-D. In phase 1, D vanishes after sharing: A, B, C refuse to sign or reveal, so the
    coordinator holds only masked vectors of phase 1 (uniform noise): its view is that of a round D never joined
    past phase 0, and Y - Q·M·Ω of D cannot be computed."""
    sites = [A, B, C, D]
    policy = ClientPolicy(required_members=frozenset(sites))
    server = ServerSession(sites, SecAggParams(threshold=3, clip=1.0, max_sites=4), LAYOUT)
    clients = {s: federation.client(s, _vectors(i), policy=policy) for i, s in enumerate(sites)}
    announce = server.start()
    for s in sites:
        server.receive(s, clients[s].handle(announce))
    relay = server.relay_advertisements()
    for s in sites:
        server.receive(s, clients[s].handle(relay))
    for s, routed in server.route_shares().items():
        if s != D:  # D drops before its masked input
            server.receive(s, clients[s].handle(routed))
    request = server.request_consistency()
    assert request.dropped == (D,)
    for s in (A, B, C):
        with pytest.raises(PolicyRefusal, match=r"survivors differs from the first secure sum's contributors "
                                                r"\(missing \['site-03'\]"):
            clients[s].handle(request)
    with pytest.raises(ThresholdNotMet, match="0 survivors signed"):
        server.request_unmask()


def test_second_phase_refuses_a_cohort_other_than_the_first_phase_contributors(federation: Federation) -> None:
    policy = ClientPolicy(required_members=frozenset({A, B, C, D}))
    announce = _announce([A, B, C], SecAggParams(threshold=3, clip=1.0, max_sites=3))
    with pytest.raises(PolicyRefusal, match="cohort differs"):
        federation.client(A, _vectors(0), policy=policy).handle(announce)


def test_clock_fixture_is_the_run_start() -> None:
    assert clock() == NOW
