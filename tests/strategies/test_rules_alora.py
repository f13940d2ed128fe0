"""Oracle tests of ``alora`` (Fed-ALoRA with heterogeneous ranks) through its public halves.

The reference is written by hand from the sites' own trained factors in the paper's terms: the shared
B moves by the weighted mean of the sites' B_{i2}B_{i1} = (B̃_i − B_0 M_i) M_iᵀ, and the published A
is the weighted mean of the sites' s_i M_i A_i. M_i is the public projector (its own tests are in
test_alora_ranks.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedquilt.strategies.adapters import save_peft
from fedquilt.strategies.alora import ALora, AloraParams
from fedquilt.strategies.alora_ranks import projector
from fedquilt.strategies.base import N_KEY, Aggregate, LocalUpdate
from fedquilt.strategies.lora import Adapter, LoraFactors
from fedquilt.strategies.registry import make_rule
from strategies_harness import ALPHA, SHAPES, context, plain_sum

RANKS = {"s1": 2, "s2": 4, "s3": 8}
COUNTS = {"s1": 30, "s2": 11, "s3": 19}
WIDTH = 8
"""d_m: the cohort's largest rank."""


def p_of(sites):
    total = sum(COUNTS[s] for s in sites)
    return {s: COUNTS[s] / total for s in sites}


def train(plans, gen, keep_b=()):
    """Each site's "trained" pair: random A, B̃ = start + noise (or its start for sites in ``keep_b``)."""
    out: dict[str, Adapter] = {}
    for s, plan in plans.items():
        out[s] = {}
        for m, f in plan.init.items():
            b = f.B.clone() if s in keep_b else f.B + torch.randn(f.B.shape, generator=gen)
            out[s][m] = LoraFactors(A=torch.randn(f.A.shape, generator=gen), B=b, scaling=plan.scaling)
    return out


def one_round(rule, ranks, glob, states, gen, rnd, keep_b=()):
    ctx = context(ranks, rnd=rnd)
    plans = {s: rule.start(glob, ctx, s, ALPHA, state=states[s]) for s in ranks}
    trained = train(plans, gen, keep_b)
    subs = {s: rule.vectors(0, LocalUpdate(adapter=trained[s]), COUNTS[s], ctx, None, state=states[s]) for s in ranks}
    agg = rule.combine(0, plain_sum(list(subs.values())), ctx, glob)
    return plans, trained, subs, agg


def reference(b0, trained, sites):
    """(B, Ā) by hand: B_0 + Σ p_i (B̃_i − B_0 M_i) M_iᵀ and Σ p_i s_i M_i A_i, in float64."""
    p = p_of(sites)
    out = {}
    for m, (d, k) in SHAPES.items():
        b, a = b0[m].clone(), torch.zeros(WIDTH, k, dtype=torch.float64)
        for s in sorted(sites):
            f = trained[s][m]
            mi = projector(0, m, s, RANKS[s], WIDTH)
            b2 = f.B.double() - b0[m] @ mi  # the paper's B_{i2}; B_{i1} = M_iᵀ
            b += p[s] * (b2 @ mi.T)
            a += p[s] * f.scaling * (mi @ f.A.double())
        out[m] = (b, a)
    return out


def test_two_mixed_rank_rounds_match_the_hand_reference():
    rule, gen = ALora(), torch.Generator().manual_seed(1)
    states = {s: {} for s in RANKS}
    zero = {m: torch.zeros(d, WIDTH, dtype=torch.float64) for m, (d, _) in SHAPES.items()}
    plans, trained1, _, glob = one_round(rule, RANKS, None, states, gen, 1)
    for s, plan in plans.items():
        assert plan.rank == RANKS[s]
        assert all(float(f.B.abs().max()) == 0.0 for f in plan.init.values())  # B_0 = 0 in round one
    ref1 = reference(zero, trained1, RANKS)
    for m in SHAPES:
        assert glob.adapter[m].rank == WIDTH and glob.adapter[m].scaling == 1.0
        torch.testing.assert_close(glob.adapter[m].B.double(), ref1[m][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(glob.adapter[m].A.double(), ref1[m][1], atol=1e-5, rtol=1e-5)
    assert glob.info["rank"] == WIDTH
    # round two: every site reads the new shared B through its projector and keeps its own A
    plans, trained2, _, glob2 = one_round(rule, RANKS, glob, states, gen, 2)
    b1 = {m: ref1[m][0] for m in SHAPES}
    for s, plan in plans.items():
        for m in SHAPES:
            torch.testing.assert_close(plan.init[m].B.double(), b1[m] @ projector(0, m, s, RANKS[s], WIDTH),
                                       atol=1e-5, rtol=1e-5)
            assert torch.equal(plan.init[m].A, trained1[s][m].A)
    ref2 = reference({m: glob.adapter[m].B.double() for m in SHAPES}, trained2, RANKS)
    for m in SHAPES:
        torch.testing.assert_close(glob2.adapter[m].B.double(), ref2[m][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(glob2.adapter[m].A.double(), ref2[m][1], atol=1e-5, rtol=1e-5)
        # the consumer's ΔW = B·Ā is the weighted mean of the sites' models re-based on the new B
        p = p_of(RANKS)
        want = sum(p[s] * trained2[s][m].scaling * ref2[m][0] @ projector(0, m, s, RANKS[s], WIDTH)
                   @ trained2[s][m].A.double() for s in RANKS)
        torch.testing.assert_close(glob2.adapter[m].delta(), want, atol=1e-4, rtol=1e-4)


def test_sites_that_leave_b_unchanged_leave_the_shared_b_unchanged():
    """Zero-padding failed this: a rank-2 site's zero columns pulled B's columns 2.. toward zero by its weight."""
    rule, gen = ALora(), torch.Generator().manual_seed(2)
    states = {s: {} for s in RANKS}
    _, _, _, glob = one_round(rule, RANKS, None, states, gen, 1)
    _, _, _, glob2 = one_round(rule, RANKS, glob, states, gen, 2, keep_b=set(RANKS))
    for m in SHAPES:
        torch.testing.assert_close(glob2.adapter[m].B, glob.adapter[m].B, atol=1e-6, rtol=1e-6)


def test_a_small_site_moves_b_only_by_its_rank_and_not_by_its_absence():
    rule, gen = ALora(), torch.Generator().manual_seed(3)
    states = {s: {} for s in RANKS}
    _, _, _, glob = one_round(rule, RANKS, None, states, gen, 1)
    _, trained, subs, glob2 = one_round(rule, RANKS, glob, states, gen, 2, keep_b={"s2", "s3"})
    for m in SHAPES:
        update = torch.from_numpy(np.asarray(subs["s1"][f"{m}/B_update"], dtype=np.float64)) / COUNTS["s1"]
        assert int(torch.linalg.matrix_rank(update, rtol=1e-5)) == RANKS["s1"]
        got = glob2.adapter[m].B.double() - glob.adapter[m].B.double()
        torch.testing.assert_close(got, p_of(RANKS)["s1"] * update, atol=1e-5, rtol=1e-5)
        assert float(got[:, RANKS["s1"]:].abs().max()) > 1e-3  # the update reaches every column of B


def test_every_site_submits_the_same_keys_and_shapes_whatever_its_rank():
    rule, gen = ALora(), torch.Generator().manual_seed(4)
    _, _, subs, _ = one_round(rule, RANKS, None, {s: {} for s in RANKS}, gen, 1)
    layouts = {s: {k: v.shape for k, v in vec.items()} for s, vec in subs.items()}
    assert len({tuple(sorted(lay.items())) for lay in layouts.values()}) == 1
    want = {N_KEY: (1,)}
    for m, (d, k) in SHAPES.items():
        want[f"{m}/B_update"], want[f"{m}/A"] = (d, WIDTH), (WIDTH, k)
    assert layouts["s1"] == want


def test_a_site_over_the_shared_rank_trains_at_the_shared_rank():
    rule = make_rule("alora", {"shared_rank": 4})
    ranks = {"s1": 2, "s2": 8}
    states = {s: {} for s in ranks}
    plans = {s: rule.start(None, context(ranks), s, ALPHA, state=states[s]) for s in ranks}
    assert plans["s1"].rank == 2 and plans["s2"].rank == 4
    assert plans["s2"].scaling == ALPHA / 8  # the site's own α/r
    with pytest.raises(ValueError, match="shared_rank must be an integer >= 0"):
        make_rule("alora", {"shared_rank": -1})
    glob = Aggregate(adapter={m: LoraFactors(A=torch.zeros(WIDTH, k), B=torch.zeros(d, WIDTH), scaling=1.0)
                              for m, (d, k) in SHAPES.items()})
    with pytest.raises(ValueError, match="shared_rank is 4 but the global's shared B has 8 columns"):
        rule.start(glob, context(ranks), "s1", ALPHA, state={})


def test_vectors_need_the_state_that_start_filled():
    rule = ALora(AloraParams())
    ctx = context(RANKS)
    plan = rule.start(None, ctx, "s1", ALPHA, state={})
    update = LocalUpdate(adapter=dict(plan.init))
    with pytest.raises(ValueError, match="state"):
        rule.vectors(0, update, 3, ctx, None)
    with pytest.raises(ValueError, match="call start"):
        rule.vectors(0, update, 3, ctx, None, state={})


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(SHAPES["layers.0.q_proj"][1], SHAPES["layers.0.q_proj"][0], bias=False)
        self.v_proj = nn.Linear(SHAPES["layers.0.v_proj"][1], SHAPES["layers.0.v_proj"][0], bias=False)


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_Block()])


def test_the_published_global_loads_in_stock_peft_as_one_rank_dm_adapter(tmp_path):
    from peft import PeftModel

    rule, gen = ALora(), torch.Generator().manual_seed(5)
    states = {s: {} for s in RANKS}
    _, _, _, glob = one_round(rule, RANKS, None, states, gen, 1)
    _, trained, _, glob2 = one_round(rule, RANKS, glob, states, gen, 2)
    save_peft(glob2.adapter, tmp_path / "v2", "tiny", "seq-cls")
    torch.manual_seed(0)
    base = _Tiny()
    before = {m: dict(base.named_modules())[m].weight.detach().double().clone() for m in SHAPES}
    merged = PeftModel.from_pretrained(base, str(tmp_path / "v2")).merge_and_unload()
    p = p_of(RANKS)
    for m in SHAPES:
        b = glob2.adapter[m].B.double()
        want = before[m] + sum(p[s] * trained[s][m].scaling * b @ projector(0, m, s, RANKS[s], WIDTH)
                               @ trained[s][m].A.double() for s in RANKS)
        got = dict(merged.named_modules())[m].weight.detach().double()
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_inconsistent_globals_and_updates_are_refused_by_name():
    rule = ALora()
    ctx = context(RANKS)
    (m1, (d1, k1)), (m2, (d2, k2)) = SHAPES.items()
    ragged = Aggregate(adapter={m1: LoraFactors(A=torch.zeros(WIDTH, k1), B=torch.zeros(d1, WIDTH), scaling=1.0),
                                m2: LoraFactors(A=torch.zeros(4, k2), B=torch.zeros(d2, 4), scaling=1.0)})
    with pytest.raises(ValueError, match=r"different widths across modules: \[4, 8\]"):
        rule.start(ragged, ctx, "s1", ALPHA, state={})
    state: dict = {}
    plan = rule.start(None, ctx, "s2", ALPHA, state=state)
    wrong = {m: LoraFactors(A=torch.zeros(2, f.A.shape[1]), B=torch.zeros(f.B.shape[0], 2), scaling=f.scaling)
             for m, f in plan.init.items()}  # a trainer that returned rank 2 for a rank-4 plan
    with pytest.raises(ValueError, match="shapes disagree"):
        rule.vectors(0, LocalUpdate(adapter=wrong), 5, ctx, None, state=state)
