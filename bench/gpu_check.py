"""Check a site's GPU installation for fedquilt: run it where the agent will run, before the first round.

    python bench/gpu_check.py [--json bench/results/gpu_check.json]

Checks, in order (a failed check makes the ones that need it "skipped"):

1. ``cuda``: torch sees a CUDA GPU (prints the count, names and memory);
2. ``bf16``: the GPU computes in bfloat16 (the default training precision on CUDA);
3. ``bitsandbytes``: the package imports (``pip install 'fedquilt[gpu]'``);
4. ``4bit load``: a tiny Llama built here loads in 4 bits (nf4, double quantization, bf16 compute)
   through the agent's own ``LoraTrainer(quantization="4bit")``;
5. ``qlora step``: one QLoRA round on it (LoRA in float32 on the 4-bit base, with a cumulative update
   stacked beside it): finite loss, factors moved, base weights untouched;
6. ``ddp``: with two or more GPUs, ``torchrun --nproc-per-node=G`` of the agent's DDP trainer
   (NCCL) gives every rank the same update.

Prints a table; exits 1 if any check failed (skipped checks do not fail, except 4-5 when 1-3 passed).
Nothing is downloaded: the model and tokenizer are built locally in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

_WORKER_FLAG = "--ddp-worker"


@dataclass
class Check:
    name: str
    status: str = "skipped"
    detail: str = ""
    seconds: float = 0.0


def _run(check: Check, fn: Callable[[], str]) -> bool:
    started = time.monotonic()
    try:
        check.detail = fn()
        check.status = "ok"
    except Exception as exc:  # a check script reports every failure, it does not stop at the first
        check.status = "FAILED"
        check.detail = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
        traceback.print_exc(file=sys.stderr)
    check.seconds = time.monotonic() - started
    return check.status == "ok"


def _cuda() -> str:
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(f"torch {torch.__version__} sees no CUDA GPU (CPU build, driver or CUDA_VISIBLE_DEVICES)")
    gpus = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
    return "; ".join(f"{i}: {g.name} {g.total_memory / 2**30:.0f} GiB" for i, g in enumerate(gpus))


def _bf16() -> str:
    import torch

    if not torch.cuda.is_bf16_supported():
        raise RuntimeError("this GPU has no bfloat16: the agent trains in float32 there (slower, twice the memory)")
    x = torch.randn(64, 64, device="cuda", dtype=torch.bfloat16)
    y = (x @ x.T).float()
    if not torch.isfinite(y).all():
        raise RuntimeError("bfloat16 matmul gave non-finite values")
    return "bf16 matmul ok"


def _bitsandbytes() -> str:
    import bitsandbytes  # type: ignore[import-not-found]

    return f"bitsandbytes {bitsandbytes.__version__}"


def _workspace(root: Path) -> Any:
    from fedquilt.cli.workspace import build_workspace

    return build_workspace(root, sites=1, task="causal-lm", seed=0)


def _qlora(ws: Any, state: dict[str, Any]) -> Callable[[], str]:
    def load() -> str:
        from fedquilt.agent.config import Quantization
        from fedquilt.agent.trainer import LoraTrainer

        trainer = LoraTrainer(ws.model_dir, "causal-lm", ["q_proj", "v_proj"], device="cuda", seed=0,
                              quantization=Quantization.FOUR_BIT)
        q = trainer._base.get_submodule("model.layers.0.self_attn.q_proj")
        if type(q).__name__ != "Linear4bit":
            raise RuntimeError(f"q_proj loaded as {type(q).__name__}, not bitsandbytes Linear4bit")
        state["trainer"] = trainer
        return f"{type(q).__name__}, {q.weight.quant_state.quant_type}"  # type: ignore[union-attr]

    def step() -> str:
        import torch

        from fedquilt.agent.data import load_dataset
        from fedquilt.agent.trainer import TrainHyper
        from fedquilt.strategies.base import TrainingPlan
        from fedquilt.strategies.lora import LoraFactors

        trainer = state["trainer"]
        packed = trainer._base.get_submodule("model.layers.0.self_attn.q_proj").weight.detach().clone()
        data = load_dataset(ws.sites[0].train, trainer.tokenizer, "causal-lm")
        g = torch.Generator().manual_seed(0)
        merge = {n: LoraFactors(torch.randn(2, k, generator=g) * 0.05, torch.randn(d, 2, generator=g) * 0.05, 1.0)
                 for n, (d, k) in trainer.target_names().items()}
        res = trainer.train(TrainingPlan(rank=4, scaling=2.0, merge=merge), data,
                            TrainHyper(local_steps=3, batch_size=8, lr=1e-2), progress=False)
        if not all(torch.isfinite(torch.tensor(res.losses))):
            raise RuntimeError(f"non-finite training loss {res.losses}")
        if not any(float(f.B.abs().max()) > 0 for f in res.update.adapter.values()):
            raise RuntimeError("LoRA B did not move from zero")
        trainer.release()
        if not torch.equal(trainer._base.get_submodule("model.layers.0.self_attn.q_proj").weight, packed):
            raise RuntimeError("the 4-bit base weights changed during the round")
        peak = torch.cuda.max_memory_allocated() / 2**20
        return f"loss {res.losses[0]:.3f} -> {res.losses[-1]:.3f}, peak {peak:.0f} MiB"

    return load if "trainer" not in state else step


def _ddp(ws: Any, gpus: int) -> Callable[[], str]:
    def run() -> str:
        out = Path(tempfile.mkdtemp(prefix="fedquilt-gpu-check-"))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
               str(Path(__file__).resolve()), _WORKER_FLAG, str(ws.model_dir), str(ws.sites[0].train), str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"torchrun exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
        import torch

        updates = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(gpus)]
        worst = max(float((u[k] - updates[0][k]).abs().max()) for u in updates[1:] for k in updates[0])
        if worst > 0:
            raise RuntimeError(f"ranks disagree on the update by {worst:.2e}")
        return f"{gpus} ranks (nccl), identical updates"

    return run


def _ddp_worker(model_dir: str, train: str, out: str) -> int:
    """One rank of the DDP check: train one round, save this rank's update."""
    import torch
    import torch.distributed as dist

    from fedquilt.agent.data import load_dataset
    from fedquilt.agent.ddp_trainer import DDPLoraTrainer
    from fedquilt.agent.distributed import Ranks, join
    from fedquilt.agent.trainer import TrainHyper
    from fedquilt.strategies.base import TrainingPlan

    ranks = Ranks.from_env()
    join(ranks)
    trainer = DDPLoraTrainer(Path(model_dir), "causal-lm", ["q_proj", "v_proj"], device="auto", seed=0)
    data = load_dataset(Path(train), trainer.tokenizer, "causal-lm")
    res = trainer.train(TrainingPlan(rank=4, scaling=2.0), data, TrainHyper(local_steps=3, batch_size=8 * ranks.world),
                        progress=False)
    update = {f"{n}.{w}": getattr(f, w) for n, f in res.update.adapter.items() for w in ("A", "B")}  # type: ignore[union-attr]
    torch.save(update, Path(out) / f"rank{ranks.rank}.pt")
    dist.destroy_process_group()
    return 0


def main(argv: list[str]) -> int:
    """Run every check, print the table (and JSON with ``--json``); 1 if any failed."""
    if argv[:1] == [_WORKER_FLAG]:
        return _ddp_worker(*argv[1:4])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    checks = {name: Check(name) for name in ("cuda", "bf16", "bitsandbytes", "4bit load", "qlora step", "ddp")}
    cuda = _run(checks["cuda"], _cuda)
    if cuda:
        _run(checks["bf16"], _bf16)
    bnb = _run(checks["bitsandbytes"], _bitsandbytes)
    with tempfile.TemporaryDirectory(prefix="fedquilt-gpu-check-") as tmp:
        ws = _workspace(Path(tmp))
        state: dict[str, Any] = {}
        if cuda and bnb and _run(checks["4bit load"], _qlora(ws, state)):
            _run(checks["qlora step"], _qlora(ws, state))
        import torch

        gpus = torch.cuda.device_count() if cuda else 0
        if gpus >= 2:
            _run(checks["ddp"], _ddp(ws, gpus))
        else:
            checks["ddp"].detail = f"{gpus} GPU(s): nothing to spread over"
    needed = [checks["4bit load"], checks["qlora step"]] if cuda and bnb else []
    failed = [c for c in checks.values() if c.status == "FAILED"] + [c for c in needed if c.status == "skipped"]
    width = max(len(c.name) for c in checks.values())
    print(f"{'check':<{width}}  {'status':<8} {'s':>6}  detail")
    for c in checks.values():
        print(f"{c.name:<{width}}  {c.status:<8} {c.seconds:6.1f}  {c.detail}")
    print("RESULT:", "FAILED (" + ", ".join(c.name for c in failed) + ")" if failed else "ok")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({c.name: vars(c) for c in checks.values()}, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main(sys.argv[1:]))
