"""Oracle tests of the factor-averaging rules (fedit, ffa, alora, dense) against dense references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedquilt.strategies.alora import ALora
from fedquilt.strategies.base import N_KEY, Aggregate, LocalUpdate
from fedquilt.strategies.dense import Dense
from fedquilt.strategies.fedit import FedIT, FedItParams
from fedquilt.strategies.ffa import FfaLora
from fedquilt.strategies.lora import LoraFactors, lora_scaling
from fedquilt.strategies.shared_init import shared_a
from strategies_harness import (
    ALPHA, SHAPES, cohort, context, delta, exact_target, plain_sum, rel_err, run_round, updates_of, weights,
)

HOMOGENEOUS = {"s1": 4, "s2": 4, "s3": 4}
MIXED = {"s1": 2, "s2": 4, "s3": 8, "s4": 3}


def fedit_reference(sites, r_max):
    """(Σ p_i √s_i B_i)(Σ p_i √s_i A_i) with explicit zero-padding loops."""
    p = weights(sites)
    out = {}
    for m, (d, k) in SHAPES.items():
        a_bar, b_bar = np.zeros((r_max, k)), np.zeros((d, r_max))
        for s, (ad, _) in sites.items():
            f = ad[m]
            r = f.A.shape[0]
            for row in range(r):
                a_bar[row] += p[s] * math.sqrt(f.scaling) * f.A[row].double().numpy()
                b_bar[:, row] += p[s] * math.sqrt(f.scaling) * f.B[:, row].double().numpy()
        out[m] = b_bar @ a_bar
    return out


@pytest.mark.parametrize("ranks", [HOMOGENEOUS, MIXED])
@pytest.mark.parametrize("rslora", [False, True])
def test_fedit_matches_factor_average(ranks, rslora):
    sites = cohort(ranks, seed=1, rslora=rslora)
    agg = run_round(FedIT(FedItParams(rslora=rslora)), updates_of(sites), context(ranks), None)
    assert rel_err(delta(agg.adapter), fedit_reference(sites, max(ranks.values()))) < 1e-6
    # factor averaging is not the exact update: the cross terms are visible
    assert rel_err(delta(agg.adapter), exact_target(sites)) > 1e-2


def test_fedit_homogeneous_is_plain_mean_of_factors():
    sites = cohort(HOMOGENEOUS, seed=2)
    agg = run_round(FedIT(), updates_of(sites), context(HOMOGENEOUS), None)
    p = weights(sites)
    s = lora_scaling(ALPHA, 4)
    m = "layers.0.q_proj"
    a_mean = sum(p[x] * sites[x][0][m].A.double() for x in sites)
    b_mean = sum(p[x] * sites[x][0][m].B.double() for x in sites)
    np.testing.assert_allclose(delta(agg.adapter)[m], s * (b_mean @ a_mean).numpy(), rtol=1e-5, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(rank=st.integers(1, 6), n_sites=st.integers(1, 5), seed=st.integers(0, 10_000), rslora=st.booleans())
def test_fedit_identical_sites_return_their_update(rank, n_sites, seed, rslora):
    ranks = {f"s{i}": rank for i in range(n_sites)}
    one = cohort({"s0": rank}, seed=seed, rslora=rslora)["s0"][0]
    sites = {s: (one, 3 + i) for i, s in enumerate(ranks)}
    agg = run_round(FedIT(FedItParams(rslora=rslora)), updates_of(sites), context(ranks), None)
    want = {m: f.scaling * (f.B.double() @ f.A.double()).numpy() for m, f in one.items()}
    assert rel_err(delta(agg.adapter), want) < 1e-5


def test_fedit_site_restarts_from_the_global():
    ranks = MIXED
    sites = cohort(ranks, seed=3)
    glob = run_round(FedIT(), updates_of(sites), context(ranks), None)
    rule = FedIT()
    for site, r in ranks.items():
        plan = rule.start(glob, context(ranks, rnd=2), site, ALPHA)
        assert plan.rank == r and plan.init is not None
        for m, f in plan.init.items():
            g = glob.adapter[m]
            want = (g.B[:, :r].double() @ g.A[:r].double()).numpy()
            np.testing.assert_allclose(delta({m: f})[m], want, rtol=1e-5, atol=1e-6)


def test_round_one_start_is_shared_across_sites():
    ranks = HOMOGENEOUS
    plans = [FedIT().start(None, context(ranks), s, ALPHA) for s in ranks]
    for m in SHAPES:
        assert all(torch.equal(p.init[m].A, plans[0].init[m].A) for p in plans)
        assert all(float(p.init[m].B.abs().sum()) == 0.0 for p in plans)


@pytest.mark.parametrize("ranks", [HOMOGENEOUS, MIXED])
def test_ffa_is_exact_with_shared_a(ranks):
    rule = FfaLora()
    ctx = context(ranks)
    gen = torch.Generator().manual_seed(4)
    sites = {}
    for i, (site, r) in enumerate(sorted(ranks.items())):
        plan = rule.start(None, ctx, site, ALPHA)
        assert plan.train_a is False and plan.train_b is True
        trained = {m: LoraFactors(A=f.A, B=torch.randn(f.B.shape, generator=gen), scaling=f.scaling) for m, f in plan.init.items()}
        sites[site] = (trained, 5 + 3 * i)
    agg = run_round(rule, updates_of(sites), ctx, None)
    assert rel_err(delta(agg.adapter), exact_target(sites)) < 1e-6
    for m, (_, k) in SHAPES.items():
        assert torch.equal(agg.adapter[m].A, shared_a(0, m, max(ranks.values()), k))
    # next round: a site's start reproduces the global's first r_i columns
    plan = rule.start(agg, context(ranks, rnd=2), "s3", ALPHA)
    m = "layers.0.q_proj"
    r = ranks["s3"]
    g = agg.adapter[m]
    np.testing.assert_allclose(delta(plan.init)[m], (g.B[:, :r].double() @ g.A[:r].double()).numpy(), rtol=1e-5, atol=1e-6)


def test_shared_a_rows_do_not_depend_on_requested_rank():
    assert torch.equal(shared_a(7, "m", 3, 16), shared_a(7, "m", 9, 16)[:3])
    assert not torch.equal(shared_a(7, "m", 3, 16), shared_a(8, "m", 3, 16))
    assert not torch.equal(shared_a(7, "m", 3, 16), shared_a(7, "n", 3, 16))


def test_alora_keeps_a_local_and_averages_b():
    """Homogeneous ranks: B = Σ p_i B̃_i M_iᵀ from B_0 = 0 (mixed ranks: test_rules_alora.py)."""
    from fedquilt.strategies.alora_ranks import projector

    ranks = HOMOGENEOUS
    rule = ALora()
    states = {s: {} for s in ranks}
    sites = cohort(ranks, seed=5)
    for s in ranks:
        rule.start(None, context(ranks), s, ALPHA, state=states[s])
    agg = run_round(rule, updates_of(sites), context(ranks), None, states)
    p = weights(sites)
    m = "layers.0.v_proj"
    want_b = sum(p[s] * sites[s][0][m].B.double() @ projector(0, m, s, 4, 4).T for s in sites)
    np.testing.assert_allclose(agg.adapter[m].B.double().numpy(), want_b.numpy(), rtol=1e-5, atol=1e-6)
    for site in ranks:
        plan = rule.start(agg, context(ranks, rnd=2), site, ALPHA, state=states[site])
        assert torch.equal(plan.init[m].A, sites[site][0][m].A)  # its own A, not the average
        np.testing.assert_allclose(plan.init[m].B.double().numpy(), (want_b @ projector(0, m, site, 4, 4)).numpy(),
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="state"):
        rule.vectors(0, LocalUpdate(adapter=sites["s1"][0]), 3, context(ranks), None)


def test_dense_averages_and_accumulates():
    ranks = HOMOGENEOUS
    gen = torch.Generator().manual_seed(6)
    rule = Dense()
    ctx = context(ranks)
    assert rule.start(None, ctx, "s1", ALPHA).dense is True
    rounds = []
    glob = None
    for _ in range(2):
        sites = {s: ({m: torch.randn(*shape, generator=gen) for m, shape in SHAPES.items()}, 4 + i) for i, s in enumerate(ranks)}
        rounds.append(sites)
        glob = run_round(rule, {s: (LocalUpdate(dense=w), n) for s, (w, n) in sites.items()}, ctx, glob)
    for m in SHAPES:
        want = sum(sum(weights(r)[s] * r[s][0][m].double() for s in r) for r in rounds)
        np.testing.assert_allclose(glob.dense[m].double().numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    plan = rule.start(glob, ctx, "s1", ALPHA)
    assert plan.merge_dense is glob.dense


def test_vectors_are_weighted_and_carry_n():
    ranks = HOMOGENEOUS
    sites = cohort(ranks, seed=8)
    ad, n = sites["s1"]
    v = FedIT().vectors(0, LocalUpdate(adapter=ad), n, context(ranks), None)
    assert v[N_KEY].dtype == np.float32 and float(v[N_KEY][0]) == n
    f = ad["layers.0.q_proj"]
    np.testing.assert_allclose(v["layers.0.q_proj/A"], n * math.sqrt(f.scaling) * f.A.numpy(), rtol=1e-6)
    assert all(x.dtype == np.float32 for x in v.values())
    with pytest.raises(ValueError, match="sample count"):
        FedIT().vectors(0, LocalUpdate(adapter=ad), 0, context(ranks), None)
    with pytest.raises(ValueError, match="sums lack"):
        FedIT().combine(0, {k: x for k, x in plain_sum([v]).items() if k != N_KEY}, context(ranks), None)


def test_unknown_site_and_missing_module_are_named():
    with pytest.raises(ValueError, match="'zz'"):
        FedIT().start(None, context(HOMOGENEOUS), "zz", ALPHA)
    ad = cohort(HOMOGENEOUS, seed=9)["s1"][0]
    ad.pop("layers.0.v_proj")
    with pytest.raises(ValueError, match="layers.0.v_proj"):
        FedIT().vectors(0, LocalUpdate(adapter=ad), 3, context(HOMOGENEOUS), None)
    assert isinstance(Aggregate(), Aggregate)
