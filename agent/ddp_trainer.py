"""``DDPLoraTrainer``: the agent's ``LoraTrainer`` on several processes (one per GPU) with DistributedDataParallel.

Theory of operation
-------------------
``torchrun --nproc-per-node=G`` (or ``accelerate launch``) starts G copies of the agent; each loads
the base on its own device and builds the same model from the same plan (rank 0 broadcasts the plan,
``agent/distributed.py``). ``hp.batch_size`` is the **global** batch: the loader draws the very batches
a single process would draw (same sampler, same seed, broadcast from rank 0 when the site set none)
and gives rank g its g-th slice of each. ``_prepare`` copies rank 0's trainable factors to every rank
and wraps the model in ``DistributedDataParallel`` without re-broadcasting the frozen base
(``init_sync=False``: every rank loaded the same files). DDP averages the gradients over the ranks, so
each rank's loss is weighted by its share of the batch's loss terms (``loss_weight``: predicted tokens
or rows) times G: the averaged gradient is then exactly the gradient of the global batch's mean loss.
Batch clipping runs on those averaged gradients, the same on every rank, so every rank holds the same
update when the loop ends. Evaluation sums (Σ weight·loss, Σ weight) over the ranks' slices, and the
training losses reported are the global batches' (the weighted slice losses summed over the ranks).

DP-SGD is not wrapped here: it is refused with several processes (see ``distributed.refuse_dp``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from .config import Quantization
from ..contract import TrainHyper
from ..strategies.adapters import Task
from .trainer import Batch, LoraTrainer, TrainerError, loss_weight


class ShardedBatches(Sampler[list[int]]):
    """Rank ``rank``'s slice of every global batch of ``batches`` (batches smaller than the world are skipped)."""

    def __init__(self, batches: BatchSampler, rank: int, world: int) -> None:
        self.batches, self.rank, self.world = batches, rank, world

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            if len(batch) >= self.world:
                yield batch[self.rank * len(batch) // self.world:(self.rank + 1) * len(batch) // self.world]

    def __len__(self) -> int:
        n, b = len(self.batches.sampler), self.batches.batch_size  # type: ignore[arg-type]
        full, last = divmod(n, b)
        return full + (1 if last >= self.world else 0)


class DDPLoraTrainer(LoraTrainer):
    """``LoraTrainer`` whose loop runs under DistributedDataParallel on the default process group."""

    def __init__(
        self,
        model_dir: Path,
        task: Task,
        target_modules: Sequence[str],
        device: str = "auto",
        seed: int | None = None,
        quantization: Quantization = Quantization.NONE,
    ) -> None:
        """Load the base on this rank's device; agree on rank 0's seed (drawn if ``seed`` is None)."""
        if not dist.is_initialized():
            raise TrainerError("DDPLoraTrainer needs an initialised process group (run under torchrun)")
        shared = [seed if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())]
        dist.broadcast_object_list(shared, src=0)
        super().__init__(model_dir, task, target_modules, device=device, seed=int(shared[0]),
                         quantization=quantization)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def _loader(self, data: Dataset[Batch], batch_size: int, shuffle: bool) -> DataLoader[Batch]:
        """This rank's slices of exactly the batches ``LoraTrainer`` would draw."""
        sampler: Sampler[int]
        generator = None
        if shuffle:
            generator = torch.Generator().manual_seed((self._seed or 0) * 1_000_003 + self._rounds)
            sampler = RandomSampler(data, generator=generator)  # type: ignore[arg-type]
        else:
            sampler = SequentialSampler(data)  # type: ignore[arg-type]
        shards = ShardedBatches(BatchSampler(sampler, batch_size, drop_last=False), self.rank, self.world)
        collate: Any = getattr(data, "collate", None)
        # The loader draws its worker seed from the generator first, as LoraTrainer's does: same permutation.
        return DataLoader(data, batch_sampler=shards, collate_fn=collate, generator=generator)

    def _prepare(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader[Batch]
    ) -> tuple[torch.nn.Module, torch.optim.Optimizer, DataLoader[Batch]]:
        """Rank 0's trainable weights everywhere, then DDP (gradients averaged over the ranks)."""
        from torch.nn.parallel import DistributedDataParallel

        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    dist.broadcast(p.data, src=0)
        ids = [self.placement.device.index] if self.placement.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, init_sync=False), optimizer, loader

    def _step_loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """This slice's mean loss × (its share of the global batch's loss terms) × world size."""
        counts = torch.tensor([loss_weight(batch)], dtype=torch.float64, device=self._comm_device())
        total = counts.clone()
        dist.all_reduce(total)
        share = float(counts[0]) / float(total[0]) if float(total[0]) > 0 else 0.0
        return self._loss(model, batch) * (share * self.world)

    def _loop(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader[Batch],
        params: list[torch.nn.Parameter], hp: TrainHyper, steps: int, progress: bool,
    ) -> list[float]:
        """The loop on this rank's slices; the losses reported are the global batches' (Σ over ranks / world)."""
        losses = super()._loop(model, optimizer, loader, params, hp, steps, progress and self.rank == 0)
        summed = torch.tensor(losses, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(summed)
        return [float(x) / self.world for x in summed.cpu()]

    def evaluate(self, model: torch.nn.Module, data: Dataset[Batch], hp: TrainHyper) -> float:
        """The global batches' weighted mean loss: every rank's slice summed over the process group."""
        total, count = self._eval_sums(model, data, hp)
        sums = torch.tensor([total, count], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(sums)
        if float(sums[1]) == 0:
            raise TrainerError("cannot evaluate on an empty dataset")
        return float(sums[0] / sums[1])

    def _comm_device(self) -> torch.device:
        """Where small tensors for collectives live: the GPU under NCCL, the CPU under gloo."""
        return self.placement.device if dist.get_backend() == "nccl" else torch.device("cpu")
