"""A tiny, fully local federation workspace: a small Llama, its tokenizer and per-site data.

Nothing is downloaded. The model is built from a ``LlamaConfig`` with random weights, the
tokenizer is a byte-level BPE trained here on the generated text, and the text is templated
sentences ("the nurse examines the fever at the clinic.") drawn from three topics. Each site
draws most of its sentences from its own topic, so the sites are non-IID, yet the shared
template makes the text learnable in a few dozen CPU steps. The ``seq-cls`` variant labels
every sentence with its topic (3 classes) and builds a ``LlamaForSequenceClassification``.

Layout under ``root``::

    model/                      config.json, model.safetensors, tokenizer.json, ...
    sites/site-<i>/train.jsonl  {"text": ...} or {"text": ..., "label": k}
    sites/site-<i>/eval.jsonl
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..strategies.adapters import Task


TOPICS: tuple[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]], ...] = (
    (
        ("the nurse", "the doctor", "the patient", "the surgeon"),
        ("treats", "examines", "visits", "calms"),
        ("the wound", "the fever", "the child", "the heart"),
        ("in the ward", "at the clinic", "after surgery", "every morning"),
    ),
    (
        ("the banker", "the trader", "the client", "the clerk"),
        ("buys", "sells", "counts", "lends"),
        ("the bonds", "the loan", "the shares", "the cash"),
        ("at the bank", "before noon", "in the market", "every quarter"),
    ),
    (
        ("the chemist", "the student", "the robot", "the physicist"),
        ("mixes", "measures", "heats", "tests"),
        ("the sample", "the acid", "the crystal", "the laser"),
        ("in the lab", "under the hood", "at night", "every week"),
    ),
)
"""(subjects, verbs, objects, places) per topic; the topic index is the seq-cls label."""

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
VOCAB_SIZE = 512


@dataclass(frozen=True)
class SitePaths:
    """One site's data files."""

    name: str
    dir: Path
    train: Path
    eval: Path


@dataclass(frozen=True)
class Workspace:
    """Paths of a built workspace."""

    root: Path
    model_dir: Path
    task: Task
    num_labels: int
    """Number of classes for ``seq-cls`` (0 for ``causal-lm``)."""
    sites: tuple[SitePaths, ...]


def sentence(rng: random.Random, topic: int) -> str:
    """One templated sentence from ``topic``."""
    subjects, verbs, objects, places = TOPICS[topic]
    return f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} {rng.choice(places)}."


def site_rows(rng: random.Random, site: int, count: int, skew: float, labelled: bool) -> list[dict[str, object]]:
    """``count`` rows for ``site``: its own topic with probability ``skew``, another otherwise."""
    rows: list[dict[str, object]] = []
    own = site % len(TOPICS)
    for _ in range(count):
        topic = own if rng.random() < skew else rng.randrange(len(TOPICS))
        row: dict[str, object] = {"text": sentence(rng, topic)}
        if labelled:
            row["label"] = topic
        rows.append(row)
    return rows


def _write_jsonl(path: Path, rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def build_tokenizer(corpus: list[str], vocab_size: int, out_dir: Path) -> int:
    """Train a byte-level BPE on ``corpus``, save it as a ``PreTrainedTokenizerFast``; return its size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call, unused-ignore]
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(str(out_dir))
    return len(fast)


def build_model(out_dir: Path, task: Task, vocab_size: int, num_labels: int, seed: int) -> None:
    """Save a randomly initialised tiny Llama (safetensors) into ``out_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, PreTrainedModel

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        pad_token_id=SPECIAL_TOKENS.index("<pad>"),
        bos_token_id=SPECIAL_TOKENS.index("<s>"),
        eos_token_id=SPECIAL_TOKENS.index("</s>"),
        tie_word_embeddings=False,
    )
    config.num_labels = max(num_labels, 2)
    torch.manual_seed(seed)
    model: PreTrainedModel
    if task == "causal-lm":
        model = LlamaForCausalLM(config)
    else:
        model = LlamaForSequenceClassification(config)  # type: ignore[no-untyped-call, unused-ignore]
    model.save_pretrained(str(out_dir))


def build_workspace(
    root: Path,
    sites: int = 3,
    task: Task = "causal-lm",
    seed: int = 0,
    train_rows: int = 96,
    eval_rows: int = 32,
    skew: float = 0.8,
) -> Workspace:
    """Build the model folder and per-site JSONL data under ``root`` (about 0.2 s once torch and transformers are imported)."""
    if task not in ("causal-lm", "seq-cls"):
        raise ValueError(f"task must be 'causal-lm' or 'seq-cls', got {task!r}")
    if sites < 1:
        raise ValueError(f"sites must be >= 1, got {sites}")
    if not 0.0 <= skew <= 1.0:
        raise ValueError(f"skew must be in [0, 1], got {skew}")
    labelled = task == "seq-cls"
    rng = random.Random(seed)
    paths: list[SitePaths] = []
    corpus: list[str] = []
    for i in range(sites):
        site_dir = root / "sites" / f"site-{i}"
        train = site_rows(rng, i, train_rows, skew, labelled)
        held = site_rows(rng, i, eval_rows, skew, labelled)
        _write_jsonl(site_dir / "train.jsonl", train)
        _write_jsonl(site_dir / "eval.jsonl", held)
        corpus.extend(str(r["text"]) for r in train)
        paths.append(SitePaths(f"site-{i}", site_dir, site_dir / "train.jsonl", site_dir / "eval.jsonl"))
    # The tokenizer sees every topic's full vocabulary, not only what the sampled rows used.
    corpus.extend(" ".join(part) for topic in TOPICS for part in topic)
    model_dir = root / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    vocab = build_tokenizer(corpus, VOCAB_SIZE, model_dir)
    num_labels = len(TOPICS) if labelled else 0
    # The embedding keeps the round size even when BPE ran out of merges on this small corpus.
    build_model(model_dir, task, max(vocab, VOCAB_SIZE), num_labels, seed)
    return Workspace(root=root, model_dir=model_dir, task=task, num_labels=num_labels, sites=tuple(paths))
