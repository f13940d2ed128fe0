"""A secure-stack federation in one process, with the agent's trainer or the old copy-the-base path.

Used by ``test_no_base_copy.py`` in-process (equality of the published adapters) and as a script in a
subprocess (peak RSS: ``python stacking_rounds.py MODEL_DIR SITE_JSONL... --out DIR [--reference]``).

The secure sum is replaced by its plain-sum oracle (its equality to the masked sum is tested in
``tests/secure_agg``); everything else is what an agent does in a round: ``rule.start`` on the published
cumulative adapter, ``trainer.train``, both phases of ``rule.vectors``, the server half's ``combine``.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedquilt.agent.data import TokenizedDataset, load_dataset
from fedquilt.agent.trainer import LoraTrainer, TrainHyper, _weight
from fedquilt.strategies.base import Aggregate, Broadcast, RoundContext, TrainingPlan
from fedquilt.strategies.registry import make_rule

ALPHA = 16.0
RANKS = {"site-0": 4, "site-1": 6}
HP = TrainHyper(local_steps=3, batch_size=8, lr=1e-2, eval_batches=1)


class ReferenceTrainer(LoraTrainer):
    """The merge-into-base path as it was before issue 16: a fresh copy of the base every round.

    Kept as the reference the resident-base path is compared against: ``merged_base`` deep-copies the
    base and adds ``plan.merge`` to the copy's target weights in float64.
    """

    def merged_base(self, plan: TrainingPlan) -> Any:
        """A fresh copy of the base with ``plan.merge`` added to the copy's weights (the old path)."""
        self.release()
        model = copy.deepcopy(self._base)
        modules = dict(model.named_modules())
        with torch.no_grad():
            for name, f in (plan.merge or {}).items():
                weight = _weight(modules[name], "weight", name)
                weight.copy_((weight.to(torch.float64) + f.delta()).to(weight.dtype))
        self._copy = model  # the copy lives for the round, as it did
        return model

    def release(self) -> None:
        """Drop the round's copy (the resident base was never touched)."""
        self._peft_model = None
        self._copy = None


def big_model(tiny_dir: Path, out: Path) -> Path:
    """The tiny workspace's tokenizer with a Llama of 6 layers at width 768 (~57 M parameters, ~220 MiB)."""
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    if (out / "model.safetensors").exists():
        return out
    out.mkdir(parents=True)
    for f in tiny_dir.iterdir():
        if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
            shutil.copy(f, out / f.name)
    small = LlamaConfig.from_pretrained(tiny_dir)
    config = LlamaConfig(vocab_size=small.vocab_size, hidden_size=768, intermediate_size=3072, num_hidden_layers=6,
                         num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=256,
                         pad_token_id=small.pad_token_id, bos_token_id=small.bos_token_id,
                         eos_token_id=small.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(out))
    return out


def rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def plain_step(model: torch.nn.Module, rows: TokenizedDataset) -> None:
    """One step of a plain PEFT loop on ``model`` (then unloaded): what "base + one training step" costs."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=max(RANKS.values()), lora_alpha=ALPHA,
                                                  target_modules=["q_proj", "v_proj"]))
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=HP.lr)
    peft_model.train()
    loss = peft_model(**rows.collate([rows[i] for i in range(HP.batch_size)])).loss
    loss.backward()
    optimizer.step()
    peft_model.unload()


def federate(trainer: LoraTrainer, data: dict[str, TokenizedDataset], rounds: int = 3,
             after_round: Any = None) -> list[Aggregate]:
    """``rounds`` rounds of secure-stack over ``data``'s sites; the published aggregate of every round."""
    rule: Any = make_rule("secure-stack", {})
    shapes = trainer.target_names()
    glob: Aggregate | None = None
    published: list[Aggregate] = []
    for rnd in range(1, rounds + 1):
        ctx = RoundContext(round=rnd, shapes=shapes, ranks=RANKS, session=f"session-{rnd}".encode(), params={})
        updates = {}
        for site, rows in sorted(data.items()):
            plan = rule.start(glob, ctx, site, ALPHA)
            updates[site] = trainer.train(plan, rows, HP, progress=False)
        broadcast: Broadcast | None = None
        for phase in range(rule.phases):
            subs = [rule.vectors(phase, r.update, r.n_samples, ctx, broadcast) for _, r in sorted(updates.items())]
            sums = {k: np.sum([np.asarray(s[k], dtype=np.float64) for s in subs], axis=0) for k in subs[0]}
            out = rule.combine(phase, sums, ctx, glob, broadcast)
            if isinstance(out, Aggregate):
                glob = out
            else:
                broadcast = out
        assert glob is not None
        published.append(glob)
        if after_round is not None:
            after_round(rnd)
    return published


def deltas(agg: Aggregate) -> dict[str, torch.Tensor]:
    """The published cumulative ΔW per module, in float64."""
    assert agg.adapter is not None
    return {name: f.delta() for name, f in agg.adapter.items()}


def main(argv: list[str]) -> int:
    """One plain step, then the federation; print peak RSS (after the step, after each round) and the model's size as JSON, save ΔW."""
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("sites", type=Path, nargs=2)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--reference", action="store_true", help="the old copy-the-base path")
    ap.add_argument("--baseline", action="store_true",
                    help="only load the base (with the agent's modules imported) and take one plain step")
    args = ap.parse_args(argv)
    if args.baseline:
        import fedquilt.cli.agent  # noqa: F401  # what an agent process holds besides the model
        import fedquilt.agent.loop, fedquilt.agent.secure_sum, fedquilt.agent.transport  # noqa: F401, E401

        trainer = LoraTrainer(args.model, "causal-lm", ["q_proj", "v_proj"], device="cpu", seed=0)
        plain_step(trainer._base, load_dataset(args.sites[0], trainer.tokenizer, "causal-lm", 128))
        print(json.dumps({"base_and_one_step_mib": rss_mib()}))
        return 0
    cls = ReferenceTrainer if args.reference else LoraTrainer
    trainer = cls(args.model, "causal-lm", ["q_proj", "v_proj"], device="cpu", seed=0)
    loaded = rss_mib()
    data = {f"site-{i}": load_dataset(p, trainer.tokenizer, "causal-lm", 32) for i, p in enumerate(args.sites)}
    plain_step(trainer._base, data["site-0"])
    baseline = rss_mib()
    peaks: list[float] = []
    published = federate(trainer, data, after_round=lambda rnd: peaks.append(rss_mib()))
    model_mib = sum(p.numel() * p.element_size() for p in trainer._base.parameters()) / 2**20
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save([deltas(agg) for agg in published], args.out / "published.pt")
    print(json.dumps({"after_load_mib": loaded, "base_and_one_step_mib": baseline, "peak_after_round_mib": peaks,
                      "model_mib": model_mib}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
