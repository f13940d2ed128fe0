"""Issue 16: evaluation reads a fixed number of batches by default, whatever the size of the local dataset."""

from __future__ import annotations

import pytest
import torch

from fedquilt.agent.data import TokenizedDataset
from fedquilt.agent.trainer import DEFAULT_EVAL_BATCHES, LoraTrainer, TrainHyper
from fedquilt.cli.workspace import Workspace
from fedquilt.strategies.base import TrainingPlan

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")


def rows(n: int) -> TokenizedDataset:
    g = torch.Generator().manual_seed(n)
    return TokenizedDataset([torch.randint(5, 200, (12,), generator=g).tolist() for _ in range(n)], None, pad_id=0)


@pytest.mark.parametrize("n", [40, 4000])
def test_default_evaluation_cost_does_not_grow_with_the_data(tiny_workspace: Workspace, n: int) -> None:
    trainer = LoraTrainer(tiny_workspace.model_dir, "causal-lm", ["q_proj"], device="cpu", seed=0)
    calls = {"eval": 0, "train": 0}

    def count(module: torch.nn.Module, args: object) -> None:
        calls["train" if torch.is_grad_enabled() else "eval"] += 1

    trainer._base.register_forward_pre_hook(count)
    hp = TrainHyper(local_steps=3, batch_size=8)
    assert hp.eval_batches == DEFAULT_EVAL_BATCHES == 1
    res = trainer.train(TrainingPlan(rank=2, scaling=1.0), rows(n), hp, progress=False)
    assert calls == {"eval": 2 * DEFAULT_EVAL_BATCHES, "train": 3}  # before + after; independent of n
    assert res.loss_before == res.loss_before and res.loss_after == res.loss_after  # both measured (not NaN)
    whole = TrainHyper(local_steps=1, batch_size=8, eval_batches=None)  # asked for explicitly: the whole dataset
    calls.update(eval=0, train=0)
    trainer.train(TrainingPlan(rank=2, scaling=1.0), rows(40), whole, progress=False)
    assert calls == {"eval": 2 * 5, "train": 1}
