"""Issue 16: quantized bases (bitsandbytes, CUDA only): refused clearly on the CPU; on CUDA, a QLoRA round."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from fedquilt.agent.basemodel import BaseModelError
from fedquilt.agent.config import Quantization, load_agent_config
from fedquilt.agent.data import load_dataset
from fedquilt.agent.trainer import LoraTrainer, TrainerError, TrainHyper
from fedquilt.cli.workspace import Workspace
from fedquilt.strategies.base import TrainingPlan
from fedquilt.strategies.lora import LoraFactors

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
CUDA_AND_BNB = torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None
NEEDS_GPU = "needs a CUDA GPU and bitsandbytes (none here); a site checks this with bench/gpu_check.py"


def _config(tmp_path: Path, quantization: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'state_dir = "state"\n[tls]\nca = "ca.pem"\ncert = "c.pem"\nkey = "k.pem"\n'
                    f'[model]\ndir = "model"\nquantization = "{quantization}"\n[data]\ntrain = "t.jsonl"\n')
    return path


def test_config_takes_4bit_8bit_none_and_names_a_bad_value(tmp_path: Path) -> None:
    assert load_agent_config(_config(tmp_path, "4bit")).model.quantization is Quantization.FOUR_BIT
    assert load_agent_config(_config(tmp_path, "8bit")).model.quantization is Quantization.EIGHT_BIT
    assert load_agent_config(_config(tmp_path, "none")).model.quantization is Quantization.NONE
    with pytest.raises(ValueError, match=r"model\.quantization: Input should be 'none', '4bit' or '8bit'"):
        load_agent_config(_config(tmp_path, "3bit"))


@pytest.mark.parametrize("quantization", [Quantization.FOUR_BIT, Quantization.EIGHT_BIT])
def test_quantized_base_on_the_cpu_is_refused_with_the_reason(tiny_workspace: Workspace, quantization: Quantization) -> None:
    with pytest.raises(BaseModelError, match=rf"quantization = '{quantization.value}' needs a CUDA GPU \(bitsandbytes\), "
                                             r"but this agent trains on cpu"):
        LoraTrainer(tiny_workspace.model_dir, "causal-lm", ["q_proj"], device="cpu", quantization=quantization)


def test_dense_updates_are_refused_on_a_quantized_base(tiny_workspace: Workspace) -> None:
    trainer = LoraTrainer(tiny_workspace.model_dir, "causal-lm", ["q_proj"], device="cpu")
    trainer.quantization = Quantization.FOUR_BIT  # what a CUDA site with a 4-bit base holds
    with pytest.raises(TrainerError, match="the 4bit base cannot take dense updates"):
        trainer.prepare(TrainingPlan(rank=2, scaling=1.0, dense=True))


@pytest.mark.skipif(not CUDA_AND_BNB, reason=NEEDS_GPU)
@pytest.mark.parametrize("quantization", [Quantization.FOUR_BIT, Quantization.EIGHT_BIT])
def test_qlora_round_on_a_quantized_base_stacks_the_cumulative_update(tiny_workspace: Workspace,
                                                                      quantization: Quantization) -> None:
    trainer = LoraTrainer(tiny_workspace.model_dir, "causal-lm", ["q_proj", "v_proj"], device="cuda", seed=0,
                          quantization=quantization)
    q0 = trainer._base.get_submodule("model.layers.0.self_attn.q_proj")
    assert type(q0).__name__ in ("Linear4bit", "Linear8bitLt")
    packed = q0.weight.detach().clone()
    data = load_dataset(tiny_workspace.sites[0].train, trainer.tokenizer, "causal-lm")
    g = torch.Generator().manual_seed(0)
    merge = {n: LoraFactors(torch.randn(3, k, generator=g) * 0.1, torch.randn(d, 3, generator=g) * 0.1, 1.0)
             for n, (d, k) in trainer.target_names().items()}
    res = trainer.train(TrainingPlan(rank=4, scaling=2.0, merge=merge), data,
                        TrainHyper(local_steps=20, batch_size=16, lr=1e-2), progress=False)
    assert res.update.adapter is not None
    assert all(torch.isfinite(f.B).all() and float(f.B.abs().max()) > 0 for f in res.update.adapter.values())
    assert res.loss_after < res.loss_before
    trainer.release()
    assert torch.equal(trainer._base.get_submodule("model.layers.0.self_attn.q_proj").weight, packed)
