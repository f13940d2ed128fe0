"""The tiny workspace: layout, loadable model and tokenizer, non-IID sites, seq-cls labels, speed."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from fedquilt.cli.workspace import TOPICS, Workspace, build_workspace


def rows(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def topic_of(text: str) -> int:
    return next(i for i, (subjects, *_) in enumerate(TOPICS) if any(text.startswith(s) for s in subjects))


def test_layout_and_model_load(tiny_workspace: Workspace) -> None:
    ws = tiny_workspace
    assert ws.task == "causal-lm" and ws.num_labels == 0 and len(ws.sites) == 3
    assert [s.name for s in ws.sites] == ["site-0", "site-1", "site-2"]
    for site in ws.sites:
        assert site.train == ws.root / "sites" / site.name / "train.jsonl" and site.train.is_file()
        assert site.eval.is_file()
    assert (ws.model_dir / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(ws.model_dir, local_files_only=True)
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (64, 2, 4)
    assert (cfg.intermediate_size, cfg.max_position_embeddings) == (128, 128)
    assert 512 <= cfg.vocab_size <= 1024


def test_tokenizer_round_trips_and_pads(tiny_workspace: Workspace) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_workspace.model_dir, local_files_only=True)
    text = "the nurse examines the fever at the clinic."
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert len(ids) < 16  # BPE learned the vocabulary: roughly one token per word
    assert tok.pad_token == "<pad>" and tok.pad_token_id == 0
    batch = tok(["the robot", text], padding=True, return_tensors="pt")
    assert batch["input_ids"].shape[0] == 2 and int(batch["attention_mask"][0].sum()) < len(ids)


def test_sites_are_non_iid(tiny_workspace: Workspace) -> None:
    for i, site in enumerate(tiny_workspace.sites):
        texts = [str(r["text"]) for r in rows(site.train)]
        assert len(texts) == 96 and len(rows(site.eval)) == 32
        counts = Counter(topic_of(t) for t in texts)
        assert counts.most_common(1)[0][0] == i % len(TOPICS)
        assert counts[i % len(TOPICS)] > 0.6 * len(texts)


def test_seq_cls_variant(tiny_cls_workspace: Workspace) -> None:
    ws = tiny_cls_workspace
    assert ws.task == "seq-cls" and ws.num_labels == 3
    model = AutoModelForSequenceClassification.from_pretrained(ws.model_dir, local_files_only=True)
    assert model.config.num_labels == 3 and model.config.pad_token_id == 0
    assert tuple(model.score.weight.shape) == (3, 64)
    for site in ws.sites:
        for r in rows(site.train):
            assert r["label"] == topic_of(str(r["text"]))


def test_deterministic_and_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    a = build_workspace(tmp_path / "a", sites=2, seed=7)
    elapsed = time.perf_counter() - start
    b = build_workspace(tmp_path / "b", sites=2, seed=7)
    c = build_workspace(tmp_path / "c", sites=2, seed=8)
    assert elapsed < 10.0
    assert a.sites[1].train.read_text() == b.sites[1].train.read_text() != c.sites[1].train.read_text()
    wa = AutoModelForCausalLM.from_pretrained(a.model_dir, local_files_only=True).state_dict()
    wb = AutoModelForCausalLM.from_pretrained(b.model_dir, local_files_only=True).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize(
    ("kwargs", "field"), [({"task": "mlm"}, "task"), ({"sites": 0}, "sites"), ({"skew": 1.5}, "skew")]
)
def test_bad_arguments_name_the_field(tmp_path: Path, kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        build_workspace(tmp_path, **kwargs)  # type: ignore[arg-type]
