"""A new seq-cls head comes from the federation's public seed: identical in every process, in the fingerprint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from fedquilt.agent.basemodel import federation_fingerprint, fingerprint, load_base
from fedquilt.agent.trainer import TrainHyper, _proximal


@pytest.fixture(scope="module")
def headless_bert(tmp_path_factory: pytest.TempPathFactory, tiny_cls_workspace) -> Path:
    import shutil

    d = tmp_path_factory.mktemp("bert")
    cfg = BertConfig(vocab_size=512, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=64, pad_token_id=0)
    BertModel(cfg).save_pretrained(str(d))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_cls_workspace.model_dir / name).exists():
            shutil.copy(tiny_cls_workspace.model_dir / name, d / name)
    return d


def test_two_processes_draw_the_same_head_from_the_seed(headless_bert: Path) -> None:
    torch.manual_seed(1)
    a, _ = load_base(headless_bert, "seq-cls", device="cpu", num_labels=3, head_seed=7)
    torch.manual_seed(2)  # another process: other global RNG state
    b, _ = load_base(headless_bert, "seq-cls", device="cpu", num_labels=3, head_seed=7)
    assert tuple(a.classifier.weight.shape) == (3, 32)
    assert torch.equal(a.classifier.weight, b.classifier.weight) and torch.equal(a.classifier.bias, b.classifier.bias)
    assert float(a.classifier.weight.detach().std()) == pytest.approx(0.02, rel=0.3)
    c, _ = load_base(headless_bert, "seq-cls", device="cpu", num_labels=3, head_seed=8)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)
    # The pretrained weights are untouched by the seeding.
    assert torch.equal(a.bert.embeddings.word_embeddings.weight, c.bert.embeddings.word_embeddings.weight)


def test_unseeded_loads_differ(headless_bert: Path) -> None:
    """What the defect was: without the seed every process draws its own head."""
    torch.manual_seed(1)
    a, _ = load_base(headless_bert, "seq-cls", device="cpu", num_labels=3)
    torch.manual_seed(2)
    b, _ = load_base(headless_bert, "seq-cls", device="cpu", num_labels=3)
    assert not torch.equal(a.classifier.weight, b.classifier.weight)


def test_fingerprint_covers_seed_and_label_count(headless_bert: Path) -> None:
    base = fingerprint(headless_bert)
    fp = federation_fingerprint(headless_bert, "seq-cls", 3, 0)
    assert fp != base and fp == federation_fingerprint(headless_bert, "seq-cls", 3, 0)
    assert fp != federation_fingerprint(headless_bert, "seq-cls", 3, 1)
    assert fp != federation_fingerprint(headless_bert, "seq-cls", 2, 0)
    assert federation_fingerprint(headless_bert, "seq-cls", None, 0) == federation_fingerprint(headless_bert, "seq-cls", 2, 0)
    assert federation_fingerprint(headless_bert, "causal-lm") == base


def test_fedprox_adds_mu_times_the_drift_to_the_gradient() -> None:
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    p.grad = torch.tensor([0.5, 0.5, 0.5])
    anchor = [torch.tensor([0.0, 0.0, 1.0])]
    _proximal([p], anchor, 0.1)
    torch.testing.assert_close(p.grad, torch.tensor([0.5 + 0.1, 0.5 - 0.2, 0.5 + 0.2]))
    assert TrainHyper(local_steps=1).prox_mu == 0.0
    with pytest.raises(ValueError):
        TrainHyper(local_steps=1, prox_mu=-1.0)
