"""Several processes per site (one per GPU): rank 0 is the agent, the other ranks train beside it.

Theory of operation
-------------------
Under ``torchrun --nproc-per-node=G`` or ``accelerate launch`` every process of the site runs
``fedquilt agent run`` with ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set. ``Ranks.from_env`` reads them
and ``join`` opens the process group (NCCL on CUDA, gloo on the CPU). Then the roles split:

* rank 0 (``Role.LEADER``) is the only process that opens a connection to the coordinator; it runs
  the usual ``AgentLoop`` (enrolment, downloads, the rule's client half, the secure sum, uploads)
  with a ``LeaderTrainer``: before it trains a round it broadcasts the round's ``TrainingPlan`` and
  ``TrainHyper`` (which carry the global state the rule prepared) to the other ranks;
* every other rank (``Role.FOLLOWER``) runs ``Follower.run``: wait for a message from rank 0, train
  the same plan on its slice of every global batch (``DDPLoraTrainer``), repeat. Its part of the
  update goes back through the process group, as DDP's averaged gradients; the result is identical on
  every rank and only rank 0's copy is used. ``LeaderTrainer.stop`` ends the followers.

A follower waits for the next round without a deadline of its own (``IDLE_TIMEOUT`` bounds the
collective); if rank 0 dies, torchrun takes the whole group down.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from typing import Any, Mapping

import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from ..contract import TrainHyper
from ..strategies.base import TrainingPlan
from .ddp_trainer import DDPLoraTrainer
from .trainer import Batch, TrainResult

log = logging.getLogger("fedquilt.agent")

IDLE_TIMEOUT = timedelta(days=1)
"""Longest a follower waits in one collective (between two rounds, the coordinator may be slow)."""


class DistributedError(RuntimeError):
    """A multi-process agent set up in a way it cannot run."""


class Role(Enum):
    """What a process of a multi-process agent does."""

    LEADER = "leader"
    FOLLOWER = "follower"


class _Op(Enum):
    TRAIN = "train"
    STOP = "stop"


@dataclass(frozen=True)
class Ranks:
    """This process's place in the site's process group (``world == 1``: a single process)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Ranks:
        """``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` as torchrun and accelerate set them (absent: one process)."""
        env = os.environ if environ is None else environ
        try:
            ranks = cls(int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0")))
        except ValueError as exc:
            raise DistributedError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers: {exc}") from None
        if ranks.world < 1 or not 0 <= ranks.rank < ranks.world:
            raise DistributedError(f"RANK must be in [0, WORLD_SIZE), got RANK={ranks.rank}, WORLD_SIZE={ranks.world}")
        return ranks

    @property
    def role(self) -> Role:
        """Rank 0 leads (talks to the coordinator); the others follow."""
        return Role.LEADER if self.rank == 0 else Role.FOLLOWER

    @property
    def distributed(self) -> bool:
        """More than one process trains for this site."""
        return self.world > 1


def join(ranks: Ranks) -> str:
    """Open the default process group for ``ranks`` (NCCL when CUDA is visible, gloo otherwise); the backend."""
    if dist.is_initialized():
        return str(dist.get_backend())
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(ranks.local_rank)
    dist.init_process_group(backend=backend, rank=ranks.rank, world_size=ranks.world, timeout=IDLE_TIMEOUT)
    return backend


def refuse_dp(ranks: Ranks, dp: object | None) -> None:
    """DP-SGD runs in one process per site only: its accountant and Poisson sampling are per process."""
    if dp is not None and ranks.distributed:
        raise DistributedError(
            f"[dp] (DP-SGD) is not supported with several training processes (WORLD_SIZE={ranks.world}): the "
            "privacy ledger and Opacus's Poisson sampling assume one process per site. Run this site's agent "
            "as a single process (no torchrun), or without [dp]")


class LeaderTrainer:
    """Rank 0's ``Trainer``: sends each round's plan to the followers, then trains its own slice."""

    def __init__(self, trainer: DDPLoraTrainer) -> None:
        self.trainer = trainer

    @property
    def tokenizer(self) -> Any:
        """The base model's tokenizer."""
        return self.trainer.tokenizer

    def target_names(self) -> dict[str, tuple[int, int]]:
        """As ``LoraTrainer.target_names``."""
        return self.trainer.target_names()

    def train(self, plan: TrainingPlan, data: Dataset[Batch], hp: TrainHyper, progress: bool = True) -> TrainResult:
        """Broadcast (plan, hp) to every rank, then train with them under DDP."""
        dist.broadcast_object_list([(_Op.TRAIN, plan, hp)], src=0)
        return self.trainer.train(plan, data, hp, progress)

    def stop(self) -> None:
        """Tell the followers to exit."""
        dist.broadcast_object_list([(_Op.STOP, None, None)], src=0)


class Follower:
    """A rank > 0: trains whatever rank 0 sends until it says stop; never talks to the coordinator."""

    def __init__(self, trainer: DDPLoraTrainer, data: Dataset[Batch]) -> None:
        self.trainer, self.data = trainer, data
        self.rounds = 0

    def run(self) -> int:
        """Serve rounds from rank 0; 0 when told to stop."""
        log.info("rank %d of %d: following rank 0 (no coordinator connection)", self.trainer.rank,
                 self.trainer.world)
        while True:
            message: list[Any] = [None]
            dist.broadcast_object_list(message, src=0)
            op, plan, hp = message[0]
            if op is _Op.STOP:
                return 0
            try:
                self.trainer.train(plan, self.data, hp, progress=False)
            except Exception:
                # Rank 0 fails the same way (same plan, same model) and drops the round; stay for the next.
                log.exception("rank %d: round failed", self.trainer.rank)
            self.rounds += 1


class Leader:
    """Rank 0's driver: the usual agent loop, then the followers' stop."""

    def __init__(self, loop: Any, trainer: LeaderTrainer) -> None:
        self.loop, self.trainer = loop, trainer

    def run(self, max_steps: int | None = None) -> int:
        """Serve the federation as ``AgentLoop.run`` does; stop the followers however it ends."""
        try:
            return int(self.loop.run(max_steps))
        finally:
            self.trainer.stop()
