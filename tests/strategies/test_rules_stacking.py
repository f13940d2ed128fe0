"""Oracle tests of stack, secure-stack and flexlora: Σ p_i s_i B_i A_i exactly, cumulative, truncated."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedquilt.strategies.flexlora import FlexLora
from fedquilt.strategies.secure_stack import SecureStack, SketchParams
from fedquilt.strategies.sketch import test_matrix as omega_of
from fedquilt.strategies.stack import Stack, StackParams
from strategies_harness import (
    ALPHA, SHAPES, cohort, context, delta, exact_target, rel_err, run_round, updates_of,
)
from fedquilt.strategies.base import LocalUpdate

HOMOGENEOUS = {"s1": 3, "s2": 3, "s3": 3}
MIXED = {"s1": 1, "s2": 2, "s3": 4, "s4": 3, "s5": 2}  # Σ r = 12 < min(d, k) = 16: low-rank target


def run_stack(rule, sites, ctx, glob):
    subs = {s: rule.vectors(LocalUpdate(adapter=a), n, ctx) for s, (a, n) in sites.items()}
    return rule.combine_individual(subs, ctx, glob)


def svd_truncated(x, rank):
    u, s, vh = np.linalg.svd(x, full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank], float((s[:rank] ** 2).sum() / (s**2).sum())


@pytest.mark.parametrize("ranks", [HOMOGENEOUS, MIXED])
@pytest.mark.parametrize("rslora", [False, True])
def test_stack_is_exact(ranks, rslora):
    sites = cohort(ranks, seed=11, rslora=rslora)
    agg = run_stack(Stack(StackParams(rslora=rslora, rtol=1e-12)), sites, context(ranks), None)
    assert rel_err(delta(agg.adapter), exact_target(sites)) < 1e-12
    assert agg.info["retained_energy"] == pytest.approx(1.0)
    assert all(f.rank == min(sum(ranks.values()), 16) for f in agg.adapter.values())


def test_stack_cumulative_over_two_rounds():
    ranks = MIXED
    r1, r2 = cohort(ranks, seed=12), cohort(ranks, seed=13)
    rule = Stack(StackParams(rtol=1e-12))
    g1 = run_stack(rule, r1, context(ranks), None)
    plan = rule.start(g1, context(ranks, rnd=2), "s2", ALPHA)
    assert plan.merge is g1.adapter and plan.init is None
    g2 = run_stack(rule, r2, context(ranks, rnd=2), g1)
    t1, t2 = exact_target(r1), exact_target(r2)
    assert rel_err(delta(g2.adapter), {m: t1[m] + t2[m] for m in SHAPES}) < 1e-12


def test_stack_truncation_reports_reference_energy():
    ranks = MIXED
    sites = cohort(ranks, seed=14)
    agg = run_stack(Stack(StackParams(publish_rank=3)), sites, context(ranks), None)
    target = exact_target(sites)
    num = den = 0.0
    for m in SHAPES:
        want, retained = svd_truncated(target[m], 3)
        assert agg.adapter[m].rank == 3
        np.testing.assert_allclose(delta(agg.adapter)[m], want, rtol=1e-9, atol=1e-9)
        assert agg.info["modules"][m]["retained_energy"] == pytest.approx(retained, rel=1e-9)
        s = np.linalg.svd(target[m], compute_uv=False)
        num, den = num + float((s[:3] ** 2).sum()), den + float((s**2).sum())
    assert agg.info["retained_energy"] == pytest.approx(num / den, rel=1e-9)
    assert agg.info["retained_energy"] < 0.999


@pytest.mark.parametrize("ranks", [HOMOGENEOUS, MIXED])
@pytest.mark.parametrize("rslora", [False, True])
def test_secure_stack_is_exact_in_float64(ranks, rslora):
    sites = cohort(ranks, seed=15, rslora=rslora)
    rule = SecureStack(SketchParams(rslora=rslora, float64=True, rtol=1e-10))
    agg = run_round(rule, updates_of(sites), context(ranks), None)
    err = rel_err(delta(agg.adapter), exact_target(sites))
    assert err < 1e-6, err
    assert agg.info["sketch_exact"] is True and agg.info["estimated_relative_error"] < 1e-6


def test_secure_stack_float32_submissions_are_close():
    sites = cohort(MIXED, seed=16)
    agg = run_round(SecureStack(), updates_of(sites), context(MIXED), None)
    assert rel_err(delta(agg.adapter), exact_target(sites)) < 1e-5
    assert all(f.rank == sum(MIXED.values()) for f in agg.adapter.values())  # float32 tail cut by rtol


def test_secure_stack_cumulative_over_two_rounds():
    ranks = MIXED
    r1, r2 = cohort(ranks, seed=17), cohort(ranks, seed=18)
    rule = SecureStack(SketchParams(float64=True, rtol=1e-10))
    g1 = run_round(rule, updates_of(r1), context(ranks, session=b"a"), None)
    g2 = run_round(rule, updates_of(r2), context(ranks, rnd=2, session=b"b"), g1)
    t1, t2 = exact_target(r1), exact_target(r2)
    assert rel_err(delta(g2.adapter), {m: t1[m] + t2[m] for m in SHAPES}) < 1e-6


def test_secure_stack_truncation_matches_reference_svd():
    sites = cohort(MIXED, seed=19)
    agg = run_round(SecureStack(SketchParams(publish_rank=4, float64=True)), updates_of(sites), context(MIXED), None)
    target = exact_target(sites)
    for m in SHAPES:
        want, retained = svd_truncated(target[m], 4)
        np.testing.assert_allclose(delta(agg.adapter)[m], want, rtol=1e-6, atol=1e-6)
        assert agg.info["modules"][m]["retained_energy"] == pytest.approx(retained, rel=1e-6)


def test_narrow_sketch_reports_a_realistic_error_estimate():
    ranks = MIXED
    sites = cohort(ranks, seed=20)
    agg = run_round(SecureStack(SketchParams(width=5, probes=8, float64=True)), updates_of(sites), context(ranks), None)
    actual = rel_err(delta(agg.adapter), exact_target(sites))
    est = agg.info["estimated_relative_error"]
    print(f"width 5 < rank 12: actual relative error {actual:.3f}, estimated {est:.3f}")
    assert agg.info["sketch_exact"] is False
    assert actual > 0.05 and 0.3 * actual < est < 3 * actual


def test_sketch_parameters_are_validated():
    with pytest.raises(ValueError, match="oversampling"):
        SketchParams(oversampling=5)
    assert SketchParams(oversampling=5, width=7).width == 7
    with pytest.raises(ValueError, match="probes"):
        SketchParams(probes=0)


def test_omega_is_shared_and_session_bound():
    a = omega_of(b"s", "range", "m", 16, 5)
    assert torch.equal(a, omega_of(b"s", "range", "m", 16, 5))
    assert not torch.equal(a, omega_of(b"t", "range", "m", 16, 5))
    assert not torch.equal(a, omega_of(b"s", "range", "n", 16, 5))


def test_phase_one_without_basis_is_refused():
    rule = SecureStack(SketchParams(passes=2))
    sites = cohort(HOMOGENEOUS, seed=21)
    with pytest.raises(ValueError, match="broadcast"):
        rule.vectors(1, LocalUpdate(adapter=sites["s1"][0]), 3, context(HOMOGENEOUS), None)
    with pytest.raises(ValueError, match="phase-0"):
        rule.combine(1, {"__n__": np.array([1.0])}, context(HOMOGENEOUS), None)


@pytest.mark.parametrize("ranks", [HOMOGENEOUS, MIXED])
def test_flexlora_is_truncated_svd_of_the_average(ranks):
    sites = cohort(ranks, seed=22)
    agg = run_round(FlexLora(SketchParams(float64=True)), updates_of(sites), context(ranks), None)
    target = exact_target(sites)
    r_max = max(ranks.values())
    for m in SHAPES:
        want, retained = svd_truncated(target[m], r_max)
        np.testing.assert_allclose(delta(agg.adapter)[m], want, rtol=1e-6, atol=1e-6)
        assert agg.info["modules"][m]["retained_energy"] == pytest.approx(retained, rel=1e-6)
    # each site restarts from its own rank-r_i slice of the global SVD
    for site, r in ranks.items():
        plan = FlexLora().start(agg, context(ranks, rnd=2), site, ALPHA)
        for m in SHAPES:
            want, _ = svd_truncated(target[m], r)
            np.testing.assert_allclose(delta(plan.init)[m], want, rtol=1e-4, atol=1e-4)
