"""Whole secure rounds in memory: every sums-only rule × a site dropping at every stage, against oracles.

The coordinator's real edge, orchestrator and ``SecureSum`` against the agents' real loops and
``SecureSumClient`` (``secure_pair.py``). A round either publishes exactly the oracle over the contributors
its facts name — Σ p_i ΔW_i for the exact rules, the plaintext round over the same contributors for the
averaging ones — or, where the protocol must refuse, is discarded with its reason and publishes nothing.
"""

from __future__ import annotations

import pytest
import torch

from fedquilt.coordinator import pki as ca_tools
from fedquilt.coordinator.steps import Step
from round_pair import SHAPES
from secure_pair import Drop, Pki, SecurePair
from test_round_pair import assert_close, cumulative, published_delta

THREE = {"a": 4, "b": 6, "c": 5}
FIVE = {"a": 2, "b": 6, "c": 4, "d": 3, "e": 5}

RULES = {"fedit": {}, "ffa": {}, "rotalign": {}, "flexlora": {}, "alora": {}, "dense": {}, "secure-stack": {},
         "secure-stack-2": {"passes": 2}}
"""Every rule that runs under secure aggregation (``stack`` needs each site's own factors: plaintext only)."""
EXACT = {"ffa", "dense", "secure-stack", "secure-stack-2"}
"""Rules whose published update is Σ p_i ΔW_i exactly; the others are checked against their plaintext round."""

TOL = 5e-4
"""Relative error allowed: the ring's fixed point (2^-26 per summed value, rounded at random) after the rules'
SVDs; a sum over a wrong set of sites is off by tens of percent."""

STAGES = [Step.TRAIN, Step.DECLARE_LAYOUT, Step.SECAGG_ADVERTISE, Step.SECAGG_SHARE, Step.SECAGG_MASKED,
          Step.SECAGG_CONSISTENCY, Step.SECAGG_UNMASK]
STILL_IN = {Step.SECAGG_CONSISTENCY, Step.SECAGG_UNMASK}
"""A site that stops after its masked input went in is still a contributor (the others' shares unmask it)."""


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """One in-test CA and a site certificate per name, shared by the whole module."""
    root = tmp_path_factory.mktemp("pki")
    ca_tools.init_ca(root / "ca")
    for name in sorted(FIVE):
        ca_tools.issue(root / "ca", root / "certs", name, ca_tools.Role.SITE)
    ca_tools.issue(root / "ca", root / "certs", "coordinator", ca_tools.Role.COORDINATOR)
    return Pki(root)


def rule_of(name: str) -> tuple[str, dict]:
    return ("secure-stack", RULES[name]) if name == "secure-stack-2" else (name, RULES[name])


def secure_pair(name: str, ranks, tmp_path, pki, **kw) -> SecurePair:
    rule, params = rule_of(name)
    return SecurePair(rule, ranks, tmp_path / "secure", pki, params=params, **kw)


def assert_facts(pair: SecurePair, want: set[str]) -> None:
    """The published facts name ``want`` as the contributors: their count, and every site the sum dropped is outside."""
    facts = pair.published[-1][2]
    secagg = facts["secure_aggregation"]
    assert secagg is not None, "a secure round published without secure-sum facts"
    assert facts["contributors"] == len(want) and facts["cohort"] == len(pair.sites)
    assert facts["dropouts"] == len(pair.sites) - len(want)
    assert set(secagg["dropped"]) <= set(pair.sites) - want
    assert facts["samples"] == sum(pair.sites[s].n for s in want)


def assert_oracle(name: str, pair: SecurePair, contributors: set[str], tmp_path, pki, rounds: int = 1) -> None:
    """The published global equals the rule's oracle over exactly ``contributors``."""
    if name in EXACT:
        per_round = [pair.expected_delta(r, contributors if r == rounds else set(pair.sites))
                     for r in range(1, rounds + 1)]
        assert_close(published_delta(pair), cumulative("secure-stack" if name == "secure-stack-2" else name,
                                                       per_round), tol=TOL)
        return
    rule, params = rule_of(name)
    plain = SecurePair(rule, {s: site.rank for s, site in pair.sites.items()}, tmp_path / "plain", pki,
                       secure=False, params=params, rounds=rounds)
    for r in range(1, rounds + 1):
        left_out = set(pair.sites) - contributors if r == rounds else set()
        entry = plain.run_round([Drop(s, Step.TRAIN) for s in sorted(left_out)])
        assert entry["version"] is not None, f"the plaintext oracle round was discarded: {entry}"
    assert_close(published_delta(pair), published_delta(plain), tol=TOL)


@pytest.mark.parametrize("stage", STAGES, ids=[s.value for s in STAGES])
@pytest.mark.parametrize("name", sorted(RULES))
def test_a_site_dropping_at_any_stage_leaves_the_oracle_over_the_contributors(name, stage, tmp_path, pki):
    pair = secure_pair(name, THREE, tmp_path, pki)
    drops = [Drop("b", stage)]
    entry = pair.run_round(drops)
    if name == "secure-stack-2" and stage in STILL_IN:
        # b's phase-0 sketch is in the sum but b is gone for phase 1: publishing would reveal its sketch, so the
        # survivors refuse to advertise keys for a second sum without b (their policy) and the round is discarded.
        assert entry["version"] is None and not pair.published
        assert entry["discarded"] == "secure sum failed: 0 sites advertised keys, need 2", entry
        return
    assert entry["version"] == "v0001", f"the round was discarded: {entry.get('discarded')}"
    want = set(THREE) if stage in STILL_IN else set(THREE) - {"b"}
    assert_facts(pair, want)
    assert_oracle(name, pair, want, tmp_path, pki)


PHASE_1 = STAGES[1:]
SECOND_SUM_REFUSED = {Step.DECLARE_LAYOUT: "sites advertised keys", Step.SECAGG_ADVERTISE: "sites shared keys",
                      Step.SECAGG_SHARE: "sites sent masked input", Step.SECAGG_MASKED: "survivors signed the survivor set"}
"""The first stage the survivors refuse once b is gone from the second sum (nobody answers it)."""


@pytest.mark.parametrize("stage", PHASE_1, ids=[s.value for s in PHASE_1])
def test_two_pass_secure_stack_losing_a_site_in_its_second_sum_publishes_nothing_else(stage, tmp_path, pki):
    pair = secure_pair("secure-stack-2", THREE, tmp_path, pki)
    drops = [Drop("b", stage, phase=1)]
    entry = pair.run_round(drops)
    if stage in STILL_IN:  # b's second masked input is in: both sums have the same participants
        assert entry["version"] == "v0001", entry
        assert_facts(pair, set(THREE))
        assert_oracle("secure-stack-2", pair, set(THREE), tmp_path, pki)
        return
    # The survivors refuse every later stage of a second sum without b (their policy: phase 0's survivors, exactly).
    assert entry["version"] is None and not pair.published, entry
    assert entry["discarded"] == f"secure sum failed: 0 {SECOND_SUM_REFUSED[stage]}, need 2", entry


@pytest.mark.parametrize("name", ["ffa", "fedit", "secure-stack", "dense"])
def test_five_sites_two_drops_at_different_stages(name, tmp_path, pki):
    pair = secure_pair(name, FIVE, tmp_path, pki)
    drops = [Drop("b", Step.SECAGG_SHARE), Drop("d", Step.SECAGG_UNMASK)]
    entry = pair.run_round(drops)
    assert entry["version"] == "v0001", entry
    want = {"a", "c", "d", "e"}  # d's masked input went in; a, c and e reveal >= t = 3 shares
    assert_facts(pair, want)
    assert pair.published[-1][2]["secure_aggregation"]["threshold"] >= 3
    assert_oracle(name, pair, want, tmp_path, pki)


@pytest.mark.parametrize("ranks,drops,reason", [
    (THREE, [Drop("b", Step.SECAGG_MASKED), Drop("c", Step.SECAGG_MASKED)], "1 sites sent masked input, need 2"),
    (FIVE, [Drop(s, Step.SECAGG_SHARE) for s in "abc"], "2 sites shared keys, need 3"),
    (FIVE, [Drop(s, Step.SECAGG_MASKED) for s in "bcd"], "2 sites sent masked input, need 3"),
    (THREE, [Drop("b", Step.DECLARE_LAYOUT), Drop("c", Step.DECLARE_LAYOUT)], "only 1 sites declared a layout"),
    (FIVE, [Drop("e", Step.TRAIN), Drop("b", Step.SECAGG_SHARE), Drop("d", Step.SECAGG_UNMASK)],
     "2 sites revealed shares, need 3"),
], ids=["3-sites-2-lost-masked", "5-sites-3-lost-share", "5-sites-3-lost-masked", "3-sites-2-lost-layout",
        "5-sites-lost-train-share-unmask"])
def test_fewer_survivors_than_the_threshold_discard_the_round(ranks, drops, reason, tmp_path, pki):
    pair = secure_pair("ffa", ranks, tmp_path, pki)
    entry = pair.run_round(drops)
    assert entry["version"] is None and not pair.published, entry
    assert entry["discarded"].startswith("secure sum failed") and reason in entry["discarded"], entry


def test_a_site_privacy_floor_above_the_survivors_discards_the_round(tmp_path, pki):
    """The agent's default floor (3 sites) with one of three dropping: the survivors refuse to unmask."""
    pair = secure_pair("ffa", THREE, tmp_path, pki, site_min_sites=3)
    entry = pair.run_round([Drop("b", Step.SECAGG_MASKED)])
    assert entry["version"] is None and not pair.published, entry
    assert "signed the survivor set" in entry["discarded"], entry


# ---- restarts ---------------------------------------------------------------------------------------


def test_a_site_restarted_between_secure_rounds_keeps_serving(tmp_path, pki):
    """rotalign keeps rule state on disk: the restarted agent reloads it and round 3 still equals plaintext."""
    pair = secure_pair("rotalign", THREE, tmp_path, pki, rounds=3)
    plain = SecurePair("rotalign", THREE, tmp_path / "plain", pki, secure=False, rounds=3)
    for number in (1, 2, 3):
        if number == 3:
            for name in THREE:
                pair.start_site(name)  # new loop, transport and secure-sum client; rule_state.pt from disk
                plain.start_site(name)
        assert pair.run_round()["version"] == f"v{number:04d}"
        assert plain.run_round()["version"] == f"v{number:04d}"
        assert_close(published_delta(pair), published_delta(plain), tol=TOL)


@pytest.mark.parametrize("name", ["dense", "ffa"])
def test_a_coordinator_restarted_between_secure_rounds_continues(name, tmp_path, pki):
    pair = secure_pair(name, THREE, tmp_path, pki, rounds=2)
    assert pair.run_round()["version"] == "v0001"
    before = pair.orch
    pair.restart_coordinator()  # the sites' next poll is refused (not enrolled): they say Hello again
    status = pair.orch.status()
    assert pair.orch is not before and status["rounds_done"] == 1 and status["global_version"] == "v0001"
    entry = pair.run_round()
    assert entry["version"] == "v0002" and entry["round"] == 2, entry
    assert_facts(pair, set(THREE))
    assert_oracle(name, pair, set(THREE), tmp_path, pki, rounds=2)


@pytest.mark.parametrize("stage", STAGES, ids=[s.value for s in STAGES])
def test_a_site_restarted_inside_a_secure_round_counts_as_dropped_there(stage, tmp_path, pki):
    """Restarted between two events of a round, the site holds no trained update (or secure sum): it drops out
    of that round there, exactly as a silent site would (restarted as TRAIN arrives, it simply trains)."""
    pair = secure_pair("ffa", THREE, tmp_path, pki, rounds=2)
    entry = pair.run_round([Drop("b", stage, restart=True)])
    assert entry["version"] == "v0001", entry
    want = set(THREE) if stage in STILL_IN or stage is Step.TRAIN else {"a", "c"}
    assert_facts(pair, want)
    assert_oracle("ffa", pair, want, tmp_path, pki)
    assert pair.run_round()["version"] == "v0002"  # and serves the next round
    assert_facts(pair, set(THREE))


@pytest.mark.parametrize("stage", STAGES, ids=[s.value for s in STAGES])
def test_a_coordinator_restarted_inside_a_secure_round_reruns_it(stage, tmp_path, pki):
    """The round in flight is lost with the process (never half-published); the new one runs it again."""
    pair = secure_pair("ffa", THREE, tmp_path, pki)
    first = pair.orch
    entry = pair.run_round(coordinator_restart=stage)
    assert pair.orch is not first and first.status()["current_round"] is not None  # the old one died mid-round
    assert entry["version"] == "v0001" and entry["round"] == 1, entry
    assert [p[0] for p in pair.published] == [1]
    assert_facts(pair, set(THREE))
    assert_oracle("ffa", pair, set(THREE), tmp_path, pki)


def test_the_secure_round_pair_sees_the_secure_sum_not_a_plaintext_upload(tmp_path, pki):
    """Guard for the harness itself: under secure aggregation no site is ever asked for a plaintext upload."""
    pair = secure_pair("ffa", THREE, tmp_path, pki)
    kinds: list[int] = []
    original = pair._handle

    def spy(site, task):
        kinds.append(task.kind)
        original(site, task)

    pair._handle = spy  # type: ignore[method-assign]
    assert pair.run_round()["version"] == "v0001"
    from fedquilt.proto import federation_pb2 as pb

    assert pb.UPLOAD_PLAIN not in kinds and pb.SECAGG_UNMASK in kinds
    assert float(sum(torch.linalg.norm(published_delta(pair)[m]) for m in SHAPES)) > 0
