"""Whole rounds in memory: the real orchestrator and every rule's real halves, against plaintext oracles.

Covers the two round bugs of issue 10: a mixed-rank ffa round whose largest-rank site drops in training
(the coordinator used to derive the padding from the survivors, the sites from the cohort), and an agent
restarted after a rotalign round (its rule state held Python objects that ``weights_only`` reloading refuses).
"""

from __future__ import annotations

import pytest
import torch

from fedquilt.strategies.lora import dense_of
from round_pair import SHAPES, RoundPair

MIXED = {"s1": 4, "s2": 8, "s3": 6}
"""Mixed ranks; s2 holds the largest."""

EXACT_RULES = ["ffa", "secure-stack", "stack", "dense"]
"""Rules whose published update equals Σ p_i ΔW_i exactly (cumulatively for the stacking rules)."""


def published_delta(pair: RoundPair) -> dict[str, torch.Tensor]:
    agg = pair.published[-1][1]
    if agg.dense is not None:
        return {m: w.to(torch.float64) for m, w in agg.dense.items()}
    assert agg.adapter is not None
    return dense_of(agg.adapter)


def cumulative(rule: str, per_round: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The global a rule publishes after these rounds: stacking and dense rules accumulate, others do not."""
    if rule in ("secure-stack", "stack", "dense"):
        return {m: sum((r[m] for r in per_round), torch.zeros(SHAPES[m], dtype=torch.float64)) for m in SHAPES}
    return per_round[-1]


def assert_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], tol: float = 1e-4) -> None:
    for m in SHAPES:
        err = float(torch.linalg.norm(got[m] - want[m]) / torch.linalg.norm(want[m]))
        assert err < tol, f"{m}: relative error {err:.2e}"


@pytest.mark.parametrize("rule", EXACT_RULES)
@pytest.mark.parametrize("ranks", [{"a": 4, "b": 4, "c": 4}, {"a": 2, "b": 6, "c": 4, "d": 3, "e": 5}])
def test_exact_rules_match_the_weighted_dense_sum(rule, ranks, tmp_path):
    pair = RoundPair(rule, ranks, tmp_path, rounds=2)
    rounds = []
    for number in (1, 2):
        pair.run_round()
        assert pair.published[-1][0] == number
        rounds.append(pair.expected_delta(number, set(ranks)))
    assert_close(published_delta(pair), cumulative(rule, rounds))


@pytest.mark.parametrize("rule", EXACT_RULES)
def test_a_site_dropping_in_training_leaves_an_exact_round_over_the_others(rule, tmp_path):
    pair = RoundPair(rule, MIXED, tmp_path, rounds=1)
    pair.run_round(skip_training={"s2"})
    assert pair.published, "the round was discarded"
    assert pair.published[-1][2]["contributors"] == 2
    assert_close(published_delta(pair), pair.expected_delta(1, {"s1", "s3"}))


@pytest.mark.parametrize("rule", ["fedit", "rotalign", "flexlora", "alora"])
@pytest.mark.parametrize("drop", [None, "s1", "s2", "s3"])
def test_averaging_rules_publish_with_any_single_drop(rule, drop, tmp_path):
    pair = RoundPair(rule, MIXED, tmp_path, rounds=2)
    for number in (1, 2):
        pair.run_round(skip_training={drop} if drop else set())
        assert [p[0] for p in pair.published][-1] == number, f"round {number} was not published"
        delta = published_delta(pair)
        assert all(torch.isfinite(delta[m]).all() and float(delta[m].norm()) > 0 for m in SHAPES)


def test_fedit_equals_the_average_of_folded_factors(tmp_path):
    ranks = {"a": 3, "b": 3, "c": 3}
    pair = RoundPair("fedit", ranks, tmp_path, rounds=1)
    pair.run_round()
    total = sum(pair.sites[s].n for s in ranks)
    agg = pair.published[-1][1]
    for m in SHAPES:
        a = sum(pair.sites[s].n / total * pair.sites[s].trained[1][m].scaling ** 0.5
                * pair.sites[s].trained[1][m].A.double() for s in ranks)
        b = sum(pair.sites[s].n / total * pair.sites[s].trained[1][m].scaling ** 0.5
                * pair.sites[s].trained[1][m].B.double() for s in ranks)
        want = b @ a
        got = agg.adapter[m].delta()
        assert float(torch.linalg.norm(got - want) / torch.linalg.norm(want)) < 1e-5


def test_rotalign_site_restarted_between_rounds_keeps_serving(tmp_path):
    pair = RoundPair("rotalign", MIXED, tmp_path, rounds=3)
    pair.run_round()
    pair.run_round()
    for site in pair.sites.values():
        site.restart()  # a restarted agent reloads rule_state.pt with torch.load(weights_only=True)
    pair.run_round()
    assert [p[0] for p in pair.published] == [1, 2, 3]


def test_rule_state_that_cannot_be_reloaded_is_refused_when_saved(tmp_path):
    from fedquilt.agent.rule_state import RuleStateError, RuleStateFile
    from fedquilt.strategies.lora import LoraFactors

    f = RuleStateFile(tmp_path / "rule_state.pt")
    with pytest.raises(RuleStateError, match=r"\['bad'\]"):
        f.save({"ok": torch.zeros(2), "bad": LoraFactors(A=torch.zeros(1, 2), B=torch.zeros(2, 1), scaling=1.0)})
    assert not (tmp_path / "rule_state.pt").exists()


def test_alora_mixed_ranks_with_drops_match_the_papers_shared_b_by_hand(tmp_path):
    """Fed-ALoRA with ranks [2, 4, 8]: the shared B moves by Σ p_i B_{i2}B_{i1} of the round's contributors,
    B_{i2} = B̃_i − B_0 M_i and B_{i1} = M_iᵀ from each site's own trained factors, and the published A is
    Σ p_i s_i M_i A_i. The largest-rank site drops in round 1 (the width stays the cohort's 8), the
    smallest in round 3."""
    from fedquilt.strategies.alora_ranks import projector

    ranks, width = {"a": 2, "b": 4, "c": 8}, 8
    pair = RoundPair("alora", ranks, tmp_path, rounds=3)
    b_ref = {m: torch.zeros(d, width, dtype=torch.float64) for m, (d, _) in SHAPES.items()}
    for number, drop in ((1, "c"), (2, None), (3, "a")):
        pair.run_round(skip_training={drop} if drop else set())
        assert pair.published[-1][0] == number
        agg = pair.published[-1][1]
        contributors = sorted(set(ranks) - {drop})
        total = sum(pair.sites[s].n for s in contributors)
        for m, (d, k) in SHAPES.items():
            b_new, a_ref = b_ref[m].clone(), torch.zeros(width, k, dtype=torch.float64)
            for s in contributors:
                f, p = pair.sites[s].trained[number][m], pair.sites[s].n / total
                mi = projector(0, m, s, ranks[s], width)
                b_new += p * (f.B.double() - b_ref[m] @ mi) @ mi.T
                a_ref += p * f.scaling * mi @ f.A.double()
            assert agg.adapter[m].rank == width
            torch.testing.assert_close(agg.adapter[m].B.double(), b_new, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(agg.adapter[m].A.double(), a_ref, atol=1e-5, rtol=1e-5)
            b_ref[m] = b_new
