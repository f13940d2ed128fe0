"""Simulated sites share one resident base model; no site may train on what the previous site left on it.

``simulation.engine.new_trainer`` gives every site a shallow copy of one template ``LoraTrainer`` (ten
sites, one model in memory). A trainer takes its round off the base only at its own next ``prepare``,
so unless the engine releases each site's round right after training, the next site starts from the
previous site's state: its dense working weights (``dense``) or its frozen cumulative-ΔW hooks on top
of its own (the stacking rules from round 2 on). The reference is the same federation with every site
holding a base of its own (a separately loaded ``LoraTrainer`` with the same seed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from fedquilt.agent.trainer import LoraTrainer
from fedquilt.coordinator.publish import publishable_adapter
from fedquilt.simulation.build import build_simulation
from fedquilt.simulation.config import SimConfig


ROUNDS = 2


def _config(ws: Any, rule: str) -> SimConfig:
    return SimConfig.model_validate({
        "name": "shared-base",
        "model": {"dir": str(ws.model_dir), "task": "causal-lm", "target_modules": ["q_proj", "v_proj"], "rank": 4,
                  "alpha": 8.0, "max_length": 32},
        "data": {"site_files": [{"train": str(s.train)} for s in ws.sites[:3]]},
        "federation": {"rule": rule, "rounds": ROUNDS, "secure": False, "seed": 0,
                       "train": {"local_steps": 2, "batch_size": 4, "lr": 1e-2}},
    })


def _global_deltas(agg: Any) -> dict[str, torch.Tensor]:
    if agg.dense:
        return {k: v.to(torch.float64) for k, v in agg.dense.items()}
    adapter, _ = publishable_adapter(agg)
    return {m: f.delta() for m, f in adapter.items()}


@pytest.mark.parametrize("rule", ["secure-stack", "dense", "fedit", "rotalign", "alora", "ffa"])
def test_shared_base_sites_train_as_sites_with_their_own_base(rule: str, tiny_workspace: Any) -> None:
    cfg = _config(tiny_workspace, rule)
    shared = build_simulation(cfg).simulation
    own = build_simulation(cfg).simulation
    for site in own.sites:  # the reference: a base of its own per site, as each agent has
        site.trainer = LoraTrainer(Path(tiny_workspace.model_dir), "causal-lm", ["q_proj", "v_proj"], device="cpu",
                                   seed=site.trainer._seed)
    got, want = _global_deltas(shared.run().glob), _global_deltas(own.run().glob)
    assert sorted(got) == sorted(want) and got
    for name in want:
        scale = float(want[name].abs().max())
        assert scale > 0
        assert torch.allclose(got[name], want[name], rtol=1e-5, atol=1e-6 * scale), (
            f"{name}: max difference {float((got[name] - want[name]).abs().max()):.3g} (scale {scale:.3g})")
