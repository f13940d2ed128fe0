"""The registry builds every rule, satisfies the contracts and names bad configuration."""

from __future__ import annotations

import pytest

from fedquilt.strategies.rule import IndividualRule, Rule
from fedquilt.strategies.server_opt import ServerOpt
from fedquilt.strategies.base import RoundContext
from fedquilt.strategies.registry import RULES, federated_rule, make_rule


@pytest.mark.parametrize("name", sorted(RULES))
def test_every_rule_builds_and_follows_its_protocol(name):
    rule = make_rule(name, {})
    assert rule.name == name
    if not RULES[name].sums_only:
        assert isinstance(rule, IndividualRule) and not isinstance(rule, Rule)
    else:
        assert isinstance(rule, Rule) and rule.phases >= 1


def test_unknown_rule_is_named():
    with pytest.raises(ValueError, match="'fedavg'"):
        make_rule("fedavg", {})


def test_unknown_param_is_named():
    with pytest.raises(ValueError, match="'lamda'"):
        make_rule("rotalign", {"lamda": 0.5})


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("rotalign", {"lam": 1.5}, "lam"),
        ("secure-stack", {"oversampling": 3}, "oversampling"),
        ("stack", {"publish_rank": 0}, "publish_rank"),
        ("fedit", {"rslora": "yes"}, "rslora"),
        ("ffa", {"seed": -1}, "seed"),
        ("flexlora", {"probes": 0}, "probes"),
    ],
)
def test_bad_values_are_named(name, params, field):
    with pytest.raises(ValueError, match=field):
        make_rule(name, params)


def test_params_reach_the_rule():
    rule = make_rule("secure-stack", {"oversampling": 12, "publish_rank": 8})
    assert rule.params.oversampling == 12 and rule.params.publish_rank == 8


@pytest.mark.parametrize("name", sorted(RULES))
def test_each_entry_says_what_its_rule_does(name):
    entry = RULES[name]
    rule = entry.build({})
    assert type(rule) is entry.rule and type(rule.params) is entry.params
    ctx = RoundContext(round=1, shapes={"m": (6, 5)}, ranks={"s1": 2, "s2": 3})
    assert rule.start(None, ctx, "s1", 8.0).dense is entry.dense  # a dense global comes from dense training
    if entry.fixed_coordinates:
        assert isinstance(federated_rule(name, server_optimizer={"name": "fedavgm"}), ServerOpt)
    else:
        with pytest.raises(ValueError, match="fixed coordinates|individual updates"):
            federated_rule(name, server_optimizer={"name": "fedavgm"})
    assert sorted(n for n, e in RULES.items() if not e.sums_only) == ["stack"]
