"""Server optimizers (FedAvgM, FedAdam, FedYogi) against hand-written references, and what they refuse."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from strategies_harness import SHAPES, cohort, context, plain_sum

from fedquilt.strategies.base import Aggregate, LocalUpdate
from fedquilt.strategies.lora import LoraFactors
from fedquilt.strategies.registry import federated_rule
from fedquilt.strategies.server_opt import ServerOptimizer, ServerOptParams


def _reference(kind: str, xs: list[float], avgs: list[float], lr: float, **kw: float) -> list[float]:
    """Scalar server optimizer, written out from Reddi et al. 2021 Alg. 2 / Hsu et al. 2019 (bias-corrected η)."""
    b1, b2, tau, mom = kw.get("beta1", 0.9), kw.get("beta2", 0.99), kw.get("tau", 1e-3), kw.get("momentum", 0.9)
    x, m, v, out = xs[0], 0.0, 0.0, []
    for t, y in enumerate(avgs, start=1):
        d = y - x
        if kind == "fedavgm":
            v = mom * v + d
            x = x + lr * v
        else:
            m = b1 * m + (1 - b1) * d
            if kind == "fedadam":
                v = b2 * v + (1 - b2) * d * d
            else:
                v = v - (1 - b2) * d * d * (1.0 if v - d * d > 0 else -1.0 if v - d * d < 0 else 0.0)
            eta = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
            x = x + eta * m / (math.sqrt(max(v, 0.0)) + tau)
        out.append(x)
    return out


class _Fixed:
    """A stand-in averaging rule whose aggregate is scripted (name 'fedit' so the wrapper accepts it)."""

    name, phases = "fedit", 1

    def __init__(self, values: list[float]) -> None:
        self.values = values

    def start(self, *a, **k):  # pragma: no cover - not used
        raise NotImplementedError

    def vectors(self, *a, **k):  # pragma: no cover - not used
        raise NotImplementedError

    def combine(self, phase, sums, ctx, glob, broadcast=None):
        y = self.values.pop(0)
        return Aggregate(dense={"m": torch.full((2, 2), y, dtype=torch.float32)}, saved={"head.bias": torch.full((3,), -y)})


@pytest.mark.parametrize("kind", ["fedavgm", "fedadam", "fedyogi"])
def test_each_optimizer_matches_its_reference(kind: str) -> None:
    from fedquilt.strategies.server_opt import ServerOpt

    avgs = [0.5, 0.8, 0.7, 1.3, 1.1]
    lr = 0.5 if kind == "fedavgm" else 0.05
    opt = ServerOpt(_Fixed(list(avgs)), ServerOptParams(ServerOptimizer(kind), lr=lr))
    ctx = context({"a": 4})
    glob = opt.combine(0, {}, ctx, None)
    assert float(glob.dense["m"][0, 0]) == pytest.approx(avgs[0])  # the first aggregate is taken as it is
    got = []
    for _ in avgs[1:]:
        glob = opt.combine(0, {}, ctx, glob)
        got.append(float(glob.dense["m"][0, 0]))
        assert float(glob.saved["head.bias"][0]) == pytest.approx(-got[-1], rel=1e-5)  # heads are stepped too
    want = _reference(kind, [avgs[0]], avgs[1:], lr)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert got != pytest.approx(avgs[1:], abs=1e-3)  # it is not plain averaging


def test_fedavgm_with_zero_momentum_and_unit_lr_is_plain_fedit() -> None:
    ranks = {"a": 4, "b": 4}
    sites = cohort(ranks, seed=3)
    plain, opt = federated_rule("fedit"), federated_rule("fedit", server_optimizer={"name": "fedavgm", "momentum": 0.0})
    glob_p = glob_o = None
    for rnd in (1, 2):
        ctx = context(ranks, rnd=rnd)
        vecs = [plain.vectors(0, LocalUpdate(adapter=a), n, ctx, None) for a, n in sites.values()]
        glob_p = plain.combine(0, plain_sum(vecs), ctx, glob_p)
        glob_o = opt.combine(0, plain_sum(vecs), ctx, glob_o)
    for m in SHAPES:
        torch.testing.assert_close(glob_o.adapter[m].B, glob_p.adapter[m].B)
        torch.testing.assert_close(glob_o.adapter[m].A, glob_p.adapter[m].A)


def test_fedadam_on_fedit_factors_steps_toward_the_average() -> None:
    ranks = {"a": 4, "b": 4}
    rule = federated_rule("fedit", server_optimizer={"name": "fedadam", "lr": 0.01})
    sites = cohort(ranks, seed=5)
    ctx = context(ranks)
    sums = plain_sum([rule.vectors(0, LocalUpdate(adapter=a), n, ctx, None) for a, n in sites.values()])
    first = rule.combine(0, sums, ctx, None)
    prev = Aggregate(adapter={m: LoraFactors(A=f.A * 0, B=f.B * 0, scaling=1.0) for m, f in first.adapter.items()})
    nxt = rule.combine(0, sums, context(ranks, rnd=2), prev)
    for m in SHAPES:
        b, target = nxt.adapter[m].B, first.adapter[m].B
        # Bias-corrected first Adam step: η·sign(Δ)/(1 + τ/|Δ|) element-wise, toward the average.
        expected = 0.01 * math.sqrt(1 - 0.99) / (1 - 0.9) * 0.1 * target / (math.sqrt(0.01) * target.abs() + 1e-3)
        torch.testing.assert_close(b, expected.float(), rtol=1e-4, atol=1e-7)
        assert bool((torch.sign(b) == torch.sign(target)).all())
    assert nxt.info["server_optimizer"] == "fedadam" and nxt.info["server_step"] == 1


@pytest.mark.parametrize("rule", ["secure-stack", "flexlora"])
def test_stacking_rules_are_refused(rule: str) -> None:
    with pytest.raises(ValueError, match="fixed coordinates"):
        federated_rule(rule, server_optimizer={"name": "fedadam"})


@pytest.mark.parametrize("bad, match", [
    ({"name": "fedsgd"}, "server_optimizer.name"),
    ({"name": "fedadam", "lr": -1.0}, "lr must be"),
    ({"name": "fedadam", "beta2": 1.0}, "beta2 must be"),
    ({"name": "fedyogi", "tau": 0.0}, "tau must be"),
    ({"name": "fedavgm", "nesterov": True}, "unknown server_optimizer parameter"),
])
def test_bad_parameters_are_named(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        federated_rule("fedit", server_optimizer=bad)
