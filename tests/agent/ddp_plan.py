"""The plan both sides of ``test_ddp_torchrun.py`` train: a cumulative update to stack on, non-zero init."""

from __future__ import annotations

import torch

from fedquilt.agent.trainer import TrainHyper
from fedquilt.strategies.base import TrainingPlan
from fedquilt.strategies.lora import LoraFactors

TARGETS = ("q_proj", "v_proj")
HP = TrainHyper(local_steps=5, batch_size=16, lr=1e-2, eval_batches=3)
"""``batch_size`` is the global batch: 8 rows per rank on 2 ranks."""


def plan_for(shapes: dict[str, tuple[int, int]]) -> TrainingPlan:
    """Rank 4, trained from a random init on base + a random rank-3 cumulative update."""
    g = torch.Generator().manual_seed(11)
    merge = {n: LoraFactors(torch.randn(3, k, generator=g) * 0.1, torch.randn(d, 3, generator=g) * 0.1, 1.0)
             for n, (d, k) in shapes.items()}
    init = {n: LoraFactors(torch.randn(4, k, generator=g) * 0.1, torch.randn(d, 4, generator=g) * 0.1, 0.5)
            for n, (d, k) in shapes.items()}
    return TrainingPlan(rank=4, scaling=0.5, merge=merge, init=init)
