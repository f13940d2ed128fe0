"""One rank of ``test_ddp_torchrun.py``: train a plan under DDP and (rank 0) save the update.

``torchrun --standalone --nproc-per-node=2 ddp_worker.py MODEL_DIR TRAIN_JSONL OUT``
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from fedquilt.agent.data import load_dataset
from fedquilt.agent.ddp_trainer import DDPLoraTrainer
from fedquilt.agent.distributed import Ranks, join

from ddp_plan import HP, TARGETS, plan_for


def main(model_dir: Path, train: Path, out: Path) -> int:
    ranks = Ranks.from_env()
    backend = join(ranks)
    trainer = DDPLoraTrainer(model_dir, "causal-lm", TARGETS, device="cpu", seed=3)
    data = load_dataset(train, trainer.tokenizer, "causal-lm")
    res = trainer.train(plan_for(trainer.target_names()), data, HP, progress=False)
    assert res.update.adapter is not None
    if ranks.rank == 0:
        factors = {f"{n}.{w}": getattr(f, w) for n, f in res.update.adapter.items() for w in ("A", "B")}
        torch.save({"factors": factors, "loss_before": res.loss_before, "loss_after": res.loss_after,
                    "steps": len(res.losses), "losses": res.losses, "backend": backend, "world": ranks.world}, out)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])))
