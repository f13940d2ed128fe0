"""The rule base: a new rule is its three steps; the public calls, the phase check and the input checks are the base's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from strategies_harness import ALPHA, SHAPES, cohort, context, exact_target, random_adapter, rel_err, run_round, updates_of

from fedquilt.strategies.base import N_KEY, Aggregate, TrainingPlan, Vectors
from fedquilt.strategies.lora import lora_scaling
from fedquilt.strategies.rule import Configured, PhaseSums, Rule, SiteStart, Submission
from fedquilt.strategies.rule_params import RuleParams
from fedquilt.strategies.saved_modules import SavedModules
from fedquilt.strategies.submission import count_vector, key, weighted


class ProductMean(Configured[RuleParams], Rule):
    """A rule written as a newcomer would: average the dense products s·B·A (exact, one phase)."""

    name = "product-mean"
    params_type = RuleParams

    def plan(self, start: SiteStart) -> TrainingPlan:
        rank, scaling = start.lora(self.params.rslora)
        return TrainingPlan(rank=rank, scaling=scaling)

    def submit(self, submission: Submission) -> Vectors:
        out: Vectors = {N_KEY: count_vector(submission.n)}
        for m, f in submission.adapter.items():
            out[key(m, "W")] = weighted(f.delta(), submission.n, float64=True)
        return out

    def aggregate(self, sums: PhaseSums) -> Aggregate:
        total = sums.total
        return Aggregate(dense={m: sums.mean(key(m, "W"), total) for m in sums.ctx.shapes})


def test_a_rule_of_three_steps_runs_a_round_and_equals_the_oracle() -> None:
    ranks = {"s1": 2, "s2": 4, "s3": 3}
    sites = cohort(ranks, seed=11)
    agg = run_round(ProductMean(), updates_of(sites), context(ranks), None)
    got = {m: w.numpy() for m, w in (agg.dense or {}).items()}
    assert rel_err(got, exact_target(sites)) < 1e-12
    wrapped = run_round(SavedModules(ProductMean()), updates_of(sites), context(ranks), None)
    assert all(torch.equal(wrapped.dense[m], agg.dense[m]) for m in SHAPES)  # type: ignore[index]


def test_the_base_plans_with_the_sites_rank_and_scaling() -> None:
    ctx = context({"s1": 2, "s2": 8})
    plan = ProductMean(RuleParams(rslora=True)).start(None, ctx, "s2", ALPHA)
    assert (plan.rank, plan.scaling) == (8, lora_scaling(ALPHA, 8, True))
    with pytest.raises(ValueError, match="'zz' is not in this round's cohort"):
        ProductMean().start(None, ctx, "zz", ALPHA)


def test_the_base_checks_the_phase_and_the_factors_before_the_rule_sees_them() -> None:
    ctx = context({"s1": 2})
    adapter = random_adapter(2, 8.0, torch.Generator().manual_seed(0))
    rule = ProductMean()
    with pytest.raises(ValueError, match=r"rule 'product-mean' has phases 0..0, got phase 1"):
        rule.vectors(1, updates_of({"s1": (adapter, 3)})["s1"][0], 3, ctx, None)
    with pytest.raises(ValueError, match="has phases 0..0, got phase -1"):
        rule.combine(-1, {N_KEY: np.array([3.0])}, ctx, None)
    partial = {m: f for m, f in adapter.items() if m != "layers.0.v_proj"}
    with pytest.raises(ValueError, match=r"the trained adapter does not match the round's modules: missing \['layers.0.v_proj'\]"):
        rule.vectors(0, updates_of({"s1": (partial, 3)})["s1"][0], 3, ctx, None)
    with pytest.raises(ValueError, match="the global adapter does not match"):
        SiteStart(Aggregate(adapter=partial), ctx, "s1", ALPHA).global_adapter()


def test_a_rule_missing_a_step_cannot_be_built() -> None:
    class NoAggregate(Configured[RuleParams], Rule):
        name, params_type = "half", RuleParams

        def plan(self, start: SiteStart) -> TrainingPlan:
            raise NotImplementedError

        def submit(self, submission: Submission) -> Vectors:
            raise NotImplementedError

    with pytest.raises(TypeError, match="abstract"):
        NoAggregate()  # type: ignore[abstract]
