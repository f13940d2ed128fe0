"""Oracle: the secure sum equals the plain sum of the contributors, with drops at every stage."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from secagg_harness import Federation, run_round, site_names

from fedquilt.secure_agg import (
    AggregateResult, ClientPolicy, SecAggParams, SiteId, Stage, ThresholdNotMet, VectorLayout, default_params,
)
from fedquilt.secure_agg.graph import neighbours
from fedquilt.secure_agg.transcript import derive_graph_seed
from fedquilt.secure_agg.quantize import quantize

Vectors = dict[SiteId, dict[str, np.ndarray]]
MATH_ONLY = ClientPolicy(min_sites=1, min_threshold_fraction=0.0)
"""These tests check the arithmetic on tiny cohorts; the site policy's floor is tested in test_secagg_policy.py."""


def _vectors(sites: list[SiteId], seed: int = 0, size: int = 6) -> Vectors:
    rng = np.random.default_rng(seed)
    return {s: {"w": rng.uniform(-1.2, 1.2, (2, size)).astype(np.float32), "n": rng.uniform(0, 1, 1)} for s in sites}


def _rounding_seed(site: SiteId) -> bytes:
    return site.encode().ljust(32, b"#")


def _run(federation: Federation, n: int, params: SecAggParams, silent: Mapping[SiteId, Stage] | None = None,
         vectors: Vectors | None = None, **server_kw: object) -> tuple[AggregateResult, Vectors]:
    sites = site_names(n)
    vectors = vectors or _vectors(sites, seed=n)
    layout = VectorLayout.of(vectors[sites[0]])
    server = federation.server(params, layout, sites, **server_kw)
    clients = {s: federation.client(s, vectors[s], rounding_seed=_rounding_seed(s), policy=MATH_ONLY) for s in sites}
    return run_round(server, clients, silent), vectors


def _check_against_oracle(result: AggregateResult, vectors: Vectors, params: SecAggParams) -> None:
    """Exact ring equality with independently quantized inputs; floats within one step per site."""
    layout = VectorLayout.of(next(iter(vectors.values())))
    ring = np.zeros(layout.size, params.ring_dtype)
    for site in result.contributors:
        ring += quantize(vectors[site], layout, params, rounding_seed=_rounding_seed(site))[0]
    assert np.array_equal(result.ring_sum, ring)
    for name, total in result.sums.items():
        plain = sum(np.clip(vectors[s][name].astype(np.float64), -params.clip, params.clip) for s in result.contributors)
        assert np.all(np.abs(total - plain) <= len(result.contributors) / params.scale)


@pytest.mark.parametrize("n", [1, 2, 3, 10])
def test_no_dropouts(federation: Federation, n: int) -> None:
    params = default_params(n, 1.0)
    result, vectors = _run(federation, n, params)
    assert result.contributors == tuple(site_names(n)) and result.dropped == ()
    _check_against_oracle(result, vectors, params)


@pytest.mark.parametrize("degree", [None, 4])
@pytest.mark.parametrize("stage", [Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK])
def test_one_site_drops_at_each_stage(federation: Federation, degree: int | None, stage: Stage) -> None:
    params = default_params(10, 1.0, degree=degree)
    victim = SiteId("site-04")
    result, vectors = _run(federation, 10, params, {victim: stage})
    assert (victim in result.contributors) == (stage == Stage.UNMASK)
    assert result.dropped == ((victim,) if stage == Stage.MASKED_INPUT else ())
    _check_against_oracle(result, vectors, params)


@pytest.mark.parametrize("degree", [None, 8])
def test_fifty_sites_with_drops_at_every_stage(federation: Federation, degree: int | None) -> None:
    params = default_params(50, 1.0, degree=degree)
    stages = [Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK]
    # The SecAgg+ graph is seeded by the session id (fresh keys every run), so the drops must be few enough
    # that no site can lose more than degree/2 holders whatever the graph: 4 drops (one per stage) for degree 8.
    step = 7 if degree is None else 13
    silent = {SiteId(f"site-{i:02d}"): stages[i % 4] for i in range(3, 50, step)}
    result, vectors = _run(federation, 50, params, silent)
    assert len(result.contributors) == 50 - sum(s < Stage.UNMASK for s in silent.values())
    assert set(result.dropped) == {s for s, st_ in silent.items() if st_ == Stage.MASKED_INPUT}
    _check_against_oracle(result, vectors, params)


def test_secagg_plus_prunes_a_site_whose_holders_all_left(federation: Federation) -> None:
    params = SecAggParams(threshold=7, clip=1.0, max_sites=12, degree=4, share_threshold=3)
    sites = site_names(12)
    vectors = _vectors(sites, seed=12)
    server = federation.server(params, VectorLayout.of(vectors[sites[0]]), sites)
    clients = {s: federation.client(s, vectors[s], rounding_seed=_rounding_seed(s)) for s in sites}
    announce = server.start()
    for s in announce.cohort:
        server.receive(s, clients[s].handle(announce))
    relay = server.relay_advertisements()
    # The graph is known only now: seeded by the session id, i.e. by every advertised key.
    assert server.session_id is not None
    graph = neighbours(sites, 4, derive_graph_seed(server.session_id))
    victim = SiteId("site-00")
    for ad in relay.advertisements:
        if ad.site not in graph[victim]:  # the victim's four holders vanish before sharing
            server.receive(ad.site, clients[ad.site].handle(relay))
    routes = server.route_shares()
    assert victim not in routes and len(routes) == 7
    for s, routed in routes.items():
        server.receive(s, clients[s].handle(routed))
    consistency = server.request_consistency()
    for s in consistency.survivors:
        server.receive(s, clients[s].handle(consistency))
    request = server.request_unmask()
    for s, _ in request.signatures:
        server.receive(s, clients[s].handle(request))
    result = server.finish()
    assert victim not in result.contributors and len(result.contributors) == 7
    _check_against_oracle(result, vectors, params)


def test_sixty_four_bit_ring_and_mask_context(federation: Federation) -> None:
    params = default_params(5, 4.0, min_frac_bits=40)
    assert params.ring_bits == 64
    sites = site_names(5)
    vectors = _vectors(sites, 7)
    layout = VectorLayout.of(vectors[sites[0]])
    server = federation.server(params, layout, sites, mask_context=b"H(Q)")
    clients = {s: federation.client(s, vectors[s], rounding_seed=_rounding_seed(s), mask_context=b"H(Q)") for s in sites}
    result = run_round(server, clients, {sites[2]: Stage.MASKED_INPUT})
    _check_against_oracle(result, vectors, params)


def test_different_mask_context_yields_noise(federation: Federation) -> None:
    # A server that sent a different Q to one site cannot unmask: the sum is garbage, not a leak.
    params = default_params(4, 1.0)
    sites = site_names(4)
    vectors = _vectors(sites, 3)
    layout = VectorLayout.of(vectors[sites[0]])
    server = federation.server(params, layout, sites, mask_context=b"Q")
    clients = {s: federation.client(s, vectors[s], mask_context=b"Q" if s != sites[1] else b"Q'") for s in sites}
    result = run_round(server, clients)
    plain = sum(vectors[s]["w"].astype(np.float64) for s in sites)
    assert np.abs(result.sums["w"] - plain).min() > 1e-3


@pytest.mark.parametrize("stage", [Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK])
def test_fewer_than_threshold_left_fails_cleanly(federation: Federation, stage: Stage) -> None:
    params = default_params(5, 1.0)  # t = 3
    silent = {SiteId("site-01"): stage, SiteId("site-02"): stage, SiteId("site-03"): stage}
    with pytest.raises(ThresholdNotMet, match="need 3"):
        _run(federation, 5, params, silent)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 7), data=st.data())
def test_random_dropout_patterns_full_graph(federation: Federation, n: int, data: st.DataObject) -> None:
    sites = site_names(n)
    choices = st.sampled_from([Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK, Stage.DONE])
    silent = {s: data.draw(choices) for s in sites}
    params = default_params(n, 1.0)
    alive = [sum(1 for s in sites if silent[s] > stage) for stage in
             (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK)]
    if min(alive) < params.threshold:
        with pytest.raises(ThresholdNotMet):
            _run(federation, n, params, silent)
        return
    result, vectors = _run(federation, n, params, silent)
    assert result.contributors == tuple(s for s in sites if silent[s] > Stage.MASKED_INPUT)
    _check_against_oracle(result, vectors, params)
