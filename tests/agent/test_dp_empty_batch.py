"""An empty Poisson batch is a DP step with no data (noise only), as the accountant assumes — never a crash.

At ``batch_size = 1`` the sample rate is 1/n, so the round's first Poisson batch is empty with
probability (1 − 1/n)^n ≈ 0.37: over 20 one-step rounds, several start with one.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from fedquilt.agent.data import TokenizedDataset, load_dataset
from fedquilt.agent.dp_trainer import DPLoraTrainer
from fedquilt.agent.privacy_session import PrivacySite
from fedquilt.agent.trainer import LoraTrainer, TrainHyper
from fedquilt.cli.workspace import Workspace
from fedquilt.strategies.base import TrainingPlan

TARGETS = ("q_proj", "v_proj")
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::FutureWarning")]
warnings.filterwarnings("ignore", message=".*Optimal order.*")


def test_twenty_rounds_at_batch_size_one_never_crash_and_every_step_is_accounted(tiny_workspace: Workspace,
                                                                                   tmp_path: Path) -> None:
    tok = LoraTrainer(tiny_workspace.model_dir, "causal-lm", TARGETS, device="cpu").tokenizer
    data: TokenizedDataset = load_dataset(tiny_workspace.sites[0].train, tok, "causal-lm")
    site = PrivacySite.from_config({"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-5},
                                   tmp_path / "privacy.json")
    trainer = DPLoraTrainer(tiny_workspace.model_dir, "causal-lm", TARGETS, site, device="cpu", seed=0)
    hp = TrainHyper(local_steps=1, batch_size=1, lr=1e-3)
    torch.manual_seed(0)  # Opacus's Poisson sampler draws from torch's default generator
    empty_first = 0
    for round_number in range(1, 21):
        result = trainer.train(TrainingPlan(rank=2, scaling=2.0), data, hp, progress=False)
        assert result.privacy is not None
        assert (result.privacy.round_steps, result.privacy.rounds) == (1, round_number)
        assert all(torch.isfinite(f.A).all() and torch.isfinite(f.B).all() for f in result.update.adapter.values())
        empty_first += int(not result.losses or result.losses[0] == 0.0)
    assert empty_first >= 1, "no round started with an empty Poisson batch: the test did not test it"
    assert json.loads((tmp_path / "privacy.json").read_text())["rounds"] == 20
