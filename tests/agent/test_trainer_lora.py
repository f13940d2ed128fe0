"""LoraTrainer against independent references: PEFT's own state, hand-merged weights, stock PEFT loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict
from pydantic import ValidationError
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from fedquilt.agent.basemodel import BaseModelError
from fedquilt.agent.data import TokenizedDataset, load_dataset
from fedquilt.agent.trainer import LoraTrainer, Trainer, TrainerError, TrainHyper
from fedquilt.cli.workspace import Workspace
from fedquilt.strategies.adapters import save_peft
from fedquilt.strategies.base import TrainingPlan
from fedquilt.strategies.lora import Adapter, LoraFactors

TARGETS = ("q_proj", "v_proj")
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
HP = TrainHyper(local_steps=8, batch_size=16, lr=1e-2)
Q0 = "model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def trainer(tiny_workspace: Workspace) -> LoraTrainer:
    return LoraTrainer(tiny_workspace.model_dir, "causal-lm", TARGETS, device="cpu", seed=0)


@pytest.fixture(scope="module")
def data(trainer: LoraTrainer, tiny_workspace: Workspace) -> TokenizedDataset:
    return load_dataset(tiny_workspace.sites[0].train, trainer.tokenizer, "causal-lm")


def base_weights(ws: Workspace) -> dict[str, torch.Tensor]:
    return load_file(str(ws.model_dir / "model.safetensors"))


def random_adapter(shapes: dict[str, tuple[int, int]], rank: int, scaling: float, seed: int) -> Adapter:
    g = torch.Generator().manual_seed(seed)
    return {
        n: LoraFactors(torch.randn(rank, k, generator=g) * 0.1, torch.randn(d, rank, generator=g) * 0.1, scaling)
        for n, (d, k) in shapes.items()
    }


def test_target_names_are_full_names_with_shapes(trainer: LoraTrainer) -> None:
    assert isinstance(trainer, Trainer)
    names = trainer.target_names()
    assert sorted(names) == sorted(f"model.layers.{i}.self_attn.{p}" for i in (0, 1) for p in TARGETS)
    assert set(names.values()) == {(64, 64)}


def test_training_lowers_loss(trainer: LoraTrainer, data: TokenizedDataset) -> None:
    res = trainer.train(TrainingPlan(rank=4, scaling=2.0), data, TrainHyper(local_steps=30, batch_size=16, lr=1e-2))
    assert res.n_samples == data.n == 96 and len(res.losses) == 30
    assert res.loss_after < res.loss_before - 0.3
    assert sum(res.losses[-5:]) / 5 < sum(res.losses[:5]) / 5 - 0.2


def test_returned_factors_equal_what_peft_holds(trainer: LoraTrainer, data: TokenizedDataset) -> None:
    plan = TrainingPlan(rank=4, scaling=2.0)
    model = trainer.prepare(plan)
    res = trainer.fit(model, plan, data, HP, progress=False)
    state = get_peft_model_state_dict(model)
    adapter = res.update.adapter
    assert adapter is not None and res.update.dense is None and sorted(adapter) == sorted(trainer.target_names())
    for name, f in adapter.items():
        assert torch.equal(f.A, state[f"base_model.model.{name}.lora_A.weight"])
        assert torch.equal(f.B, state[f"base_model.model.{name}.lora_B.weight"])
        assert f.scaling == 2.0 and float(f.B.abs().max()) > 0  # B moved away from PEFT's zero init


def test_frozen_a_stays_bit_identical(trainer: LoraTrainer, data: TokenizedDataset) -> None:
    init = random_adapter(trainer.target_names(), 4, 0.5, seed=1)
    res = trainer.train(TrainingPlan(rank=4, scaling=0.5, init=init, train_a=False), data, HP, progress=False)
    assert res.update.adapter is not None
    for name, f in res.update.adapter.items():
        assert torch.equal(f.A, init[name].A)
        assert not torch.allclose(f.B, init[name].B)
    res = trainer.train(TrainingPlan(rank=4, scaling=0.5, init=init, train_b=False), data, HP, progress=False)
    assert res.update.adapter is not None
    assert all(torch.equal(f.B, init[n].B) and not torch.equal(f.A, init[n].A) for n, f in res.update.adapter.items())


def test_merge_adds_s_b_a_to_the_base(trainer: LoraTrainer, tiny_workspace: Workspace, data: TokenizedDataset) -> None:
    """The resident base with the plan applied computes what hand-merged weights compute, and is never written."""
    merge = random_adapter(trainer.target_names(), 3, 1.5, seed=2)
    extra = "model.layers.1.mlp.up_proj"
    dense = {extra: torch.randn(128, 64, generator=torch.Generator().manual_seed(3)) * 0.01}
    base = base_weights(tiny_workspace)
    model = trainer.merged_base(TrainingPlan(rank=4, scaling=1.0, merge=merge, merge_dense=dense))
    hand = AutoModelForCausalLM.from_pretrained(tiny_workspace.model_dir, local_files_only=True).eval()
    with torch.no_grad():
        for name, f in merge.items():
            w = hand.get_submodule(name).weight
            w.copy_((w.double() + 1.5 * f.B.double() @ f.A.double()).float())
        hand.get_submodule(extra).weight.add_(dense[extra])
        batch = data.collate([data[i] for i in range(4)])
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        got, want = model(**inputs).logits, hand(**inputs).logits
        assert torch.allclose(got, want, atol=1e-5, rtol=0) and not torch.allclose(got, base_logits(base, hand, inputs))
        state = model.state_dict()  # ΔW sits beside the weights: the stored target weights are the base's
        for name in merge:
            assert torch.equal(state[f"{name}.weight"], base[f"{name}.weight"])
        assert torch.allclose(state[f"{extra}.weight"], base[f"{extra}.weight"] + dense[extra], atol=1e-7)
        # the next round starts clean: no hook left, every weight bit-identical to the file
        fresh = trainer.merged_base(TrainingPlan(rank=4, scaling=1.0))
        assert all(torch.equal(v, base[k]) for k, v in fresh.state_dict().items() if k in base)
        plain = fresh(**inputs).logits
        assert torch.equal(plain, base_logits(base, hand, inputs))


def base_logits(base: dict[str, torch.Tensor], model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of ``model``'s architecture with the file's weights (a fresh model, nothing merged)."""
    fresh = type(model)(model.config).eval()
    fresh.load_state_dict(base, strict=False)
    fresh.tie_weights()
    with torch.no_grad():
        logits: torch.Tensor = fresh(**inputs).logits
    return logits


def test_dense_returns_w_after_minus_w_before(trainer: LoraTrainer, data: TokenizedDataset,
                                             tiny_workspace: Workspace) -> None:
    plan = TrainingPlan(rank=4, scaling=1.0, dense=True, merge_dense={Q0: torch.full((64, 64), 0.01)})
    model = trainer.prepare(plan)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    res = trainer.fit(model, plan, data, HP, progress=False)
    after = model.state_dict()
    assert res.update.adapter is None and res.update.dense is not None
    assert sorted(res.update.dense) == sorted(trainer.target_names())
    for name, delta in res.update.dense.items():
        assert torch.equal(delta, after[f"{name}.weight"] - before[f"{name}.weight"])
        assert float(delta.abs().max()) > 0
    frozen = [k for k in before if not any(k == f"{t}.weight" for t in trainer.target_names())]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    # the dense round trained float32 working copies: releasing it leaves the resident base as loaded
    trainer.release()
    base = base_weights(tiny_workspace)
    assert all(torch.equal(v, base[k]) for k, v in model.state_dict().items() if k in base)
    assert not any(p.requires_grad for p in model.parameters())


def test_saved_adapter_loads_in_peft_as_the_hand_merged_model(
    trainer: LoraTrainer, data: TokenizedDataset, tiny_workspace: Workspace, tmp_path: Path
) -> None:
    init = random_adapter(trainer.target_names(), 4, 2.0, seed=4)  # non-zero B: a visible ΔW
    res = trainer.train(TrainingPlan(rank=4, scaling=2.0, init=init), data, HP, progress=False)
    assert res.update.adapter is not None
    save_peft(res.update.adapter, tmp_path / "adapter", str(tiny_workspace.model_dir), "causal-lm")
    ids = data.collate([data[i] for i in range(4)])
    load: Any = lambda: AutoModelForCausalLM.from_pretrained(tiny_workspace.model_dir, local_files_only=True)
    peft = PeftModel.from_pretrained(load(), str(tmp_path / "adapter")).eval()
    merged = load().eval()
    base_logits = merged(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits
    with torch.no_grad():
        for name, f in res.update.adapter.items():
            w = merged.get_submodule(name).weight
            w.copy_((w.double() + f.scaling * f.B.double() @ f.A.double()).float())
        want = merged(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits
        got = peft(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    assert not torch.allclose(got, base_logits, atol=1e-3)


def test_update_reproduces_the_trained_model(trainer: LoraTrainer, data: TokenizedDataset, tiny_workspace: Workspace) -> None:
    """base + merge + returned ΔW, merged by hand, has exactly the loss the trainer reports."""
    shapes = trainer.target_names()
    merge, init = random_adapter(shapes, 2, 3.0, seed=6), random_adapter(shapes, 4, 0.25, seed=7)
    res = trainer.train(TrainingPlan(rank=4, scaling=0.25, merge=merge, init=init), data, HP, progress=False)
    assert res.update.adapter is not None
    model = AutoModelForCausalLM.from_pretrained(tiny_workspace.model_dir, local_files_only=True)
    with torch.no_grad():
        for name in shapes:
            w = model.get_submodule(name).weight
            w.copy_((w.double() + merge[name].delta() + res.update.adapter[name].delta()).float())
    assert trainer.evaluate(model, data, HP) == pytest.approx(res.loss_after, abs=1e-5)
    assert abs(res.loss_after - res.loss_before) > 1e-3


def test_seq_cls_trains_the_head_as_a_target(tiny_cls_workspace: Workspace, tmp_path: Path) -> None:
    ws = tiny_cls_workspace
    t = LoraTrainer(ws.model_dir, "seq-cls", ("q_proj", "v_proj", "score"), device="cpu", seed=0)
    assert t.target_names()["score"] == (3, 64)
    data = load_dataset(ws.sites[1].train, t.tokenizer, "seq-cls", num_labels=3)
    res = t.train(TrainingPlan(rank=2, scaling=1.0), data, TrainHyper(local_steps=30, batch_size=16, lr=2e-2), False)
    assert res.update.adapter is not None and "score" in res.update.adapter
    assert res.loss_after < res.loss_before - 0.1
    save_peft(res.update.adapter, tmp_path / "cls", str(ws.model_dir), "seq-cls")
    load: Any = lambda: AutoModelForSequenceClassification.from_pretrained(ws.model_dir, local_files_only=True)
    batch = data.collate([data[i] for i in range(6)])
    peft = PeftModel.from_pretrained(load(), str(tmp_path / "cls")).eval()
    merged = load().eval()
    with torch.no_grad():
        for name, f in res.update.adapter.items():
            w = merged.get_submodule(name).weight
            w.copy_((w.double() + f.scaling * f.B.double() @ f.A.double()).float())
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        assert torch.allclose(peft(**inputs).logits, merged(**inputs).logits, atol=1e-5, rtol=0)


class Wrapped(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, **batch: torch.Tensor) -> Any:
        return self.inner(**batch)


class HookedTrainer(LoraTrainer):
    """What a DP subclass does: wrap in ``_prepare``, own the loss."""

    seen: dict[str, Any] = {}

    def _prepare(self, model: torch.nn.Module, optimizer: Any, loader: Any) -> Any:
        self.seen.update(model=model, optimizer=optimizer, steps=self.planned_steps)
        self.seen["devices"] = {p.device.type for p in model.parameters()}
        return Wrapped(model), optimizer, loader

    def _loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self.seen["wrapped"] = isinstance(model, Wrapped) or self.seen.get("wrapped", False)
        return super()._loss(model, batch)


def test_prepare_hook_seam(tiny_workspace: Workspace, data: TokenizedDataset) -> None:
    t = HookedTrainer(tiny_workspace.model_dir, "causal-lm", TARGETS, device="cpu", seed=0)
    plan = TrainingPlan(rank=4, scaling=2.0)
    model = t.prepare(plan)
    res = t.fit(model, plan, data, HP, progress=False)
    seen = t.seen
    assert seen["model"] is model and seen["steps"] == 8 and seen["devices"] == {"cpu"} and seen["wrapped"]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    in_optimizer = {id(p) for g in seen["optimizer"].param_groups for p in g["params"]}
    assert trainable == in_optimizer and len(trainable) == 2 * len(TARGETS) * 2
    state = get_peft_model_state_dict(model)
    assert res.update.adapter is not None
    assert all(torch.equal(f.B, state[f"base_model.model.{n}.lora_B.weight"]) for n, f in res.update.adapter.items())
    assert all(float(f.B.abs().max()) > 0 for f in res.update.adapter.values())


def test_same_seed_same_update(tiny_workspace: Workspace, data: TokenizedDataset) -> None:
    runs = [
        LoraTrainer(tiny_workspace.model_dir, "causal-lm", ["q_proj"], device="cpu", seed=5).train(
            TrainingPlan(rank=2, scaling=1.0), data, TrainHyper(epochs=1, batch_size=32, lr=1e-2), progress=False
        )
        for _ in range(2)
    ]
    assert len(runs[0].losses) == 3  # one epoch of 96 rows in batches of 32
    a, b = runs[0].update.adapter, runs[1].update.adapter
    assert a is not None and b is not None
    assert all(torch.equal(a[n].A, b[n].A) and torch.equal(a[n].B, b[n].B) for n in a)


def test_precise_errors(trainer: LoraTrainer, data: TokenizedDataset, tiny_workspace: Workspace) -> None:
    with pytest.raises(BaseModelError, match="'o_proj_x' matches no module"):
        LoraTrainer(tiny_workspace.model_dir, "causal-lm", ["o_proj_x"], device="cpu")
    with pytest.raises(BaseModelError, match="'model.embed_tokens' is a Embedding"):
        LoraTrainer(tiny_workspace.model_dir, "causal-lm", ["embed_tokens"], device="cpu")
    bad = random_adapter(trainer.target_names(), 3, 1.0, seed=0)
    with pytest.raises(TrainerError, match=r"plan.init\['model.layers.0.self_attn.q_proj'\].A is \(3, 64\), PEFT's lora_A is \(4, 64\)"):
        trainer.prepare(TrainingPlan(rank=4, scaling=1.0, init=bad))
    with pytest.raises(TrainerError, match="scaling 1.0, the plan trains with 2.0"):
        trainer.prepare(TrainingPlan(rank=3, scaling=2.0, init=bad))
    with pytest.raises(TrainerError, match=r"missing \['model.layers.0.self_attn.v_proj', 'model.layers.1"):
        trainer.prepare(TrainingPlan(rank=3, scaling=1.0, init={Q0: bad[Q0]}))
    with pytest.raises(TrainerError, match="nothing to train"):
        trainer.prepare(TrainingPlan(rank=4, scaling=1.0, train_a=False, train_b=False))
    with pytest.raises(TrainerError, match="'model.nope': the base model has no such module weight"):
        trainer.merged_base(TrainingPlan(rank=4, scaling=1.0, merge_dense={"model.nope": torch.zeros(2, 2)}))
    with pytest.raises(TrainerError, match=r"update is \(2, 2\), weight is \(64, 64\)"):
        trainer.merged_base(TrainingPlan(rank=4, scaling=1.0, merge_dense={Q0: torch.zeros(2, 2)}))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"local_steps": 0}, "local_steps"),
        ({"epochs": 1, "batch_size": 0}, "batch_size"),
        ({"epochs": 1, "lr": -1.0}, "lr"),
        ({"epochs": 1, "lr": float("nan")}, "lr"),
        ({"epochs": 1, "max_grad_norm": -1.0}, "max_grad_norm"),
        ({"epochs": 1, "optimizer": "adam"}, "optimizer"),
        ({"epochs": 1, "momentum": 0.9}, "momentum"),
        ({}, "local_steps or epochs"),
        ({"epochs": 1, "local_steps": 3}, "local_steps or epochs"),
    ],
)
def test_hyper_validation_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        TrainHyper(**kwargs)
    assert TrainHyper(local_steps=3, optimizer="sgd").optimizer == "sgd"
