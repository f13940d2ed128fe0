"""DP-SGD on a tiny PEFT LoRA Llama: exactness at zero noise, accounting, budget stop, traps."""

from __future__ import annotations

import copy
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from opacus.accountants import RDPAccountant
from peft import LoraConfig, get_peft_model
from torch.utils.data import DataLoader
from transformers import LlamaConfig, LlamaForCausalLM

from fedquilt.agent.privacy import (
    BudgetExhausted,
    DPConfig,
    PrivacyError,
    PrivacyLedger,
    StepLimitExceeded,
    UnsupportedConfiguration,
    make_private,
)

VOCAB, SEQ = 48, 10
warnings.filterwarnings("ignore", message=".*Optimal order.*")


def tiny_lora(
    targets: tuple[str, ...] = ("q_proj", "v_proj"), seed: int = 0, dora: bool = False
) -> Any:
    """A 2-layer Llama with LoRA on ``targets``; B starts non-zero so every factor has grads."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
    )
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules=list(targets), lora_dropout=0.0,
        init_lora_weights=False, use_dora=dora,
    )
    return get_peft_model(LlamaForCausalLM(cfg), lora).to("cpu")


def records(n: int, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = torch.randint(0, VOCAB, (SEQ,), generator=g)
        labels = ids.clone()
        labels[: 1 + i % 4] = -100  # different numbers of ignored tokens per record
        out.append({"input_ids": ids, "labels": labels})
    return out


def lora_params(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def sgd(model: Any, lr: float = 0.5) -> torch.optim.SGD:
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)


def train_round(run: Any, steps: int) -> None:
    model, opt, loader = run.prepared()
    it = iter(loader)
    for _ in range(steps):
        batch = next(it)  # Poisson batches may be empty: batch_loss handles that
        run.batch_loss(model, batch).backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_zero_noise_huge_clip_equals_plain_sgd(mode: str, tmp_path: Path) -> None:
    data = records(6)
    private, plain = tiny_lora(), tiny_lora()
    cfg = DPConfig(noise_multiplier=0.0, max_grad_norm=1e6, mode=mode, poisson_sampling=False)
    run = make_private(private, sgd(private), DataLoader(data, batch_size=6), cfg,
                       PrivacyLedger(tmp_path / "l.json"), steps=1)
    train_round(run, 1)
    # Reference: each record's own HF loss (token mean within the record), averaged over records.
    opt = sgd(plain)
    ref = sum(plain(input_ids=r["input_ids"][None], labels=r["labels"][None]).loss for r in data)
    (ref / len(data)).backward()
    opt.step()
    got, want, before = lora_params(private), lora_params(plain), lora_params(tiny_lora())
    for name in want:
        assert not torch.equal(want[name], before[name]), name  # the step moved it
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6)
    assert run.finish()[0] == float("inf")  # no noise: no privacy, reported honestly


def test_clipping_is_active_with_small_norm(tmp_path: Path) -> None:
    """Guards the test above: a small clip norm must change the update."""
    data = records(6)
    private, plain = tiny_lora(), tiny_lora()
    cfg = DPConfig(noise_multiplier=0.0, max_grad_norm=1e-3, poisson_sampling=False)
    run = make_private(private, sgd(private), DataLoader(data, batch_size=6), cfg,
                       PrivacyLedger(tmp_path / "l.json"), steps=1)
    train_round(run, 1)
    opt = sgd(plain)
    ref = sum(plain(input_ids=r["input_ids"][None], labels=r["labels"][None]).loss for r in data)
    ref.backward()
    opt.step()
    got, want = lora_params(private), lora_params(plain)
    assert any(not torch.allclose(got[n], want[n], atol=1e-4) for n in want)


def reference_epsilon(steps: int, sigma: float, q: float, delta: float) -> float:
    acc = RDPAccountant()
    for _ in range(steps):
        acc.step(noise_multiplier=sigma, sample_rate=q)
    return float(acc.get_epsilon(delta=delta))


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_epsilon_matches_opacus_and_survives_restart(mode: str, tmp_path: Path) -> None:
    path, data = tmp_path / "ledger.json", records(16)
    cfg = DPConfig(noise_multiplier=1.1, delta=1e-5, mode=mode)
    model = tiny_lora()
    eps = []
    for r in range(3):
        ledger = PrivacyLedger(path)  # a fresh object each round = an agent restart
        assert ledger.rounds == r
        run = make_private(model, sgd(model), DataLoader(data, batch_size=4), cfg, ledger, steps=4)
        assert run.sample_rate == 0.25
        train_round(run, 4)
        eps.append(run.finish())
        want = reference_epsilon(4 * (r + 1), 1.1, 0.25, 1e-5)
        assert eps[-1][0] == pytest.approx(want, rel=1e-9)
    assert eps[0][0] < eps[1][0] < eps[2][0]
    assert PrivacyLedger(path).epsilon(1e-5) == eps[2][0]
    assert PrivacyLedger(path).history == [(1.1, 0.25, 12)]


def test_budget_stop_at_the_right_round(tmp_path: Path) -> None:
    sigma, q, per_round = 1.0, 0.25, 4
    e3, e4 = (reference_epsilon(per_round * k, sigma, q, 1e-5) for k in (3, 4))
    budget = (e3 + e4) / 2
    cfg = DPConfig(noise_multiplier=sigma, max_epsilon=budget)
    model, ledger, data = tiny_lora(), PrivacyLedger(tmp_path / "l.json"), records(16)
    for _ in range(3):
        loader = DataLoader(data, batch_size=4)
        run = make_private(model, sgd(model), loader, cfg, ledger, per_round)
        train_round(run, per_round)
        assert run.finish()[0] <= budget
    before = lora_params(model)
    with pytest.raises(BudgetExhausted) as err:
        make_private(model, sgd(model), DataLoader(data, batch_size=4), cfg, ledger, per_round)
    want = (
        f"site privacy budget spent: ε would reach {e4:.2f} after round 4 "
        f"(budget {budget}, δ=1e-05); refusing to train"
    )
    assert str(err.value) == want
    assert ledger.rounds == 3 and lora_params(model).keys() == before.keys()


def test_target_epsilon_calibrates_the_whole_plan(tmp_path: Path) -> None:
    cfg = DPConfig(target_epsilon=2.0, planned_rounds=3, delta=1e-5)
    model, ledger, data = tiny_lora(), PrivacyLedger(tmp_path / "l.json"), records(16)
    for _ in range(3):
        run = make_private(model, sgd(model), DataLoader(data, batch_size=4), cfg, ledger, 4)
        train_round(run, 4)
        eps, _ = run.finish()
    assert 1.95 <= eps <= 2.0
    assert eps == pytest.approx(reference_epsilon(12, run.noise_multiplier, 0.25, 1e-5), rel=1e-9)
    with pytest.raises(BudgetExhausted, match=re.escape("after round 4 (budget 2.0")):
        make_private(model, sgd(model), DataLoader(data, batch_size=4), cfg, ledger, 4)


def test_more_steps_than_cleared_are_refused(tmp_path: Path) -> None:
    model = tiny_lora()
    cfg = DPConfig(noise_multiplier=1.0)
    run = make_private(model, sgd(model), DataLoader(records(16), batch_size=4), cfg,
                       PrivacyLedger(tmp_path / "l.json"), steps=2)
    train_round(run, 2)
    after_two = lora_params(model)
    with pytest.raises(StepLimitExceeded, match="cleared 2 DP steps"):
        train_round(run, 1)
    assert all(torch.equal(after_two[n], p) for n, p in lora_params(model).items())
    run.finish()
    assert run.ledger.history == [(1.0, 0.25, 2)]


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_lora_weights_change_under_dp(mode: str, tmp_path: Path) -> None:
    model = tiny_lora().to(torch.device("cpu"))  # moved first, then wrapped
    before = lora_params(model)
    cfg = DPConfig(noise_multiplier=1.0, max_grad_norm=1.0, mode=mode)
    run = make_private(model, sgd(model, lr=0.1), DataLoader(records(16), batch_size=4), cfg,
                       PrivacyLedger(tmp_path / "l.json"), steps=3)
    train_round(run, 3)
    run.finish()
    after = lora_params(model)
    assert set(after) == set(before) and len(after) == 8  # 2 layers x (q, v) x (A, B)
    for name in before:
        assert (after[name] - before[name]).abs().max() > 1e-4, name
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())  # Opacus detached


def test_finish_flags_weights_that_never_moved(tmp_path: Path) -> None:
    model, ledger = tiny_lora(), PrivacyLedger(tmp_path / "l.json")
    frozen_opt = sgd(model, lr=0.0)  # steps happen, nothing moves: what the device trap looks like
    run = make_private(model, frozen_opt, DataLoader(records(16), batch_size=4),
                       DPConfig(noise_multiplier=1.0), ledger, steps=2)
    train_round(run, 2)
    with pytest.raises(PrivacyError, match="no trainable weight changed over 2 DP steps"):
        run.finish()
    assert PrivacyLedger(tmp_path / "l.json").history == [(1.0, 0.25, 2)]  # still recorded


def test_embedding_lora_is_refused(tmp_path: Path) -> None:
    model = tiny_lora(targets=("embed_tokens", "q_proj"))
    with pytest.raises(UnsupportedConfiguration, match="LoRA on embedding layers"):
        make_private(model, sgd(model), DataLoader(records(8), batch_size=4),
                     DPConfig(noise_multiplier=1.0), PrivacyLedger(tmp_path / "l.json"), 1)


def test_wrapping_twice_without_finish_is_refused(tmp_path: Path) -> None:
    model, ledger = tiny_lora(), PrivacyLedger(tmp_path / "l.json")
    loader, cfg = DataLoader(records(8), batch_size=4), DPConfig(noise_multiplier=1.0)
    run = make_private(model, sgd(model), loader, cfg, ledger, 1)
    with pytest.raises(UnsupportedConfiguration, match="call finish"):
        make_private(model, sgd(model), loader, cfg, ledger, 1)
    run.finish()
    make_private(model, sgd(model), loader, cfg, ledger, 1).finish()
    assert ledger.rounds == 2


def test_dora_is_refused(tmp_path: Path) -> None:
    model = tiny_lora(dora=True)
    with pytest.raises(UnsupportedConfiguration, match="DoRA"):
        make_private(model, sgd(model), DataLoader(records(8), batch_size=4),
                     DPConfig(noise_multiplier=1.0), PrivacyLedger(tmp_path / "l.json"), 1)


def test_mixed_devices_are_refused(tmp_path: Path) -> None:
    model = tiny_lora()
    name = next(n for n, p in model.named_parameters() if p.requires_grad and "lora_B" in n)
    owner, leaf = model.get_submodule(name.rsplit(".", 1)[0]), name.rsplit(".", 1)[1]
    setattr(owner, leaf, torch.nn.Parameter(torch.empty_like(getattr(owner, leaf), device="meta")))
    with pytest.raises(UnsupportedConfiguration, match="move the whole model to its device"):
        make_private(model, sgd(model), DataLoader(records(8), batch_size=4),
                     DPConfig(noise_multiplier=1.0), PrivacyLedger(tmp_path / "l.json"), 1)


def test_parameters_missing_from_optimizer_are_refused(tmp_path: Path) -> None:
    model = tiny_lora()
    stale = copy.deepcopy(model)  # optimizer built on another copy: the real weights never move
    with pytest.raises(UnsupportedConfiguration, match="not in the optimizer"):
        make_private(model, sgd(stale), DataLoader(records(8), batch_size=4),
                     DPConfig(noise_multiplier=1.0), PrivacyLedger(tmp_path / "l.json"), 1)


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_empty_poisson_batch_takes_a_noise_only_step(mode: str, tmp_path: Path) -> None:
    model, lr, sigma, clip = tiny_lora(), 0.5, 2.0, 0.5
    cfg = DPConfig(noise_multiplier=sigma, max_grad_norm=clip, mode=mode)
    run = make_private(model, sgd(model, lr=lr), DataLoader(records(16), batch_size=4), cfg,
                       PrivacyLedger(tmp_path / "l.json"), steps=1)
    empty = {"input_ids": torch.zeros((0, SEQ), dtype=torch.long)}
    assert run.is_empty(empty) and not run.is_empty(records(1)[0] | {"input_ids": torch.ones(1, 3)})
    before = lora_params(model)
    run.batch_loss(model, empty).backward()  # what a trainer loop does with any batch
    run.optimizer.step()
    moved = torch.cat([(lora_params(model)[n] - before[n]).flatten() for n in before])
    # update = -lr * N(0, (σC)²) / expected_batch_size, expected batch = 16 * 1/4
    assert float(moved.std()) == pytest.approx(lr * sigma * clip / 4, rel=0.1)
    assert abs(float(moved.mean())) < 0.02
    assert run.finish()[0] > 0 and run.ledger.history == [(sigma, 0.25, 1)]
