"""The dense rule's local training with the GaLore optimizer (galore-torch), when it is installed."""

from __future__ import annotations

import pytest
import torch

from fedquilt.agent.data import load_dataset
from fedquilt.agent.trainer import LoraTrainer, TrainHyper
from fedquilt.strategies.base import TrainingPlan

def test_galore_dense_training_lowers_the_loss_and_returns_low_rank_steps(tiny_workspace) -> None:
    pytest.importorskip("galore_torch", reason="galore-torch is not installed (pip install galore-torch)")
    trainer = LoraTrainer(tiny_workspace.model_dir, "causal-lm", ["q_proj", "v_proj"], device="cpu", seed=0)
    data = load_dataset(tiny_workspace.sites[0].train, trainer.tokenizer, "causal-lm", max_length=48)
    hp = TrainHyper(local_steps=12, batch_size=8, lr=5e-3, optimizer="galore-adamw", galore_rank=4,
                    galore_update_proj_gap=50, galore_scale=1.0)
    result = trainer.train(TrainingPlan(rank=1, scaling=1.0, dense=True), data, hp, progress=False)
    assert result.update.dense and result.loss_after < result.loss_before
    for name, delta in result.update.dense.items():
        # Every GaLore step lives in a rank-4 subspace of the gradient; with one projection per
        # run (gap 50 > 12 steps) the whole update has rank <= 4.
        sv = torch.linalg.svdvals(delta.double())
        assert int((sv > sv[0] * 1e-6).sum()) <= 4, name


def test_missing_galore_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tiny_workspace) -> None:
    import builtins

    real_import = builtins.__import__

    def no_galore(name: str, *args: object, **kwargs: object) -> object:
        if name == "galore_torch":
            raise ImportError("No module named 'galore_torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_galore)
    trainer = LoraTrainer(tiny_workspace.model_dir, "causal-lm", ["q_proj"], device="cpu", seed=0)
    data = load_dataset(tiny_workspace.sites[0].train, trainer.tokenizer, "causal-lm", max_length=32)
    with pytest.raises(Exception, match="galore-torch"):
        trainer.train(TrainingPlan(rank=1, scaling=1.0, dense=True), data,
                      TrainHyper(local_steps=1, optimizer="galore-adamw"), progress=False)
