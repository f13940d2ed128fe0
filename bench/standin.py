"""A stand-in site: the real agent loop, transport and secure-sum client around a trainer that returns at once.

``StandInTrainer`` answers ``train`` with seeded random factors of the right shapes (or dense deltas when the
rule asks for them), so a federation of many sites can run on a laptop: everything on the wire, the
secure sum and the coordinator are the real ones. Used by ``bench/load.py`` and by the wire tests that
play a hostile site (subclass ``AgentLoop`` and change what it submits).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from fedquilt.agent.loop import AgentLoop, hello_request
from fedquilt.agent.secure_sum import SecureSumClient
from fedquilt.agent.trainer import TrainHyper, TrainResult
from fedquilt.agent.transport import Transport, channel
from fedquilt.strategies.base import LocalUpdate, TrainingPlan
from fedquilt.strategies.lora import LoraFactors


class StandInTrainer:
    """A ``Trainer`` that trains nothing: seeded factors of the planned rank, the right shapes, at once."""

    def __init__(self, shapes: Mapping[str, tuple[int, int]], n: int, seed: int = 0, scale: float = 0.1) -> None:
        self.shapes, self.n, self.scale = dict(shapes), n, scale
        self.gen = torch.Generator().manual_seed(seed)

    def target_names(self) -> dict[str, tuple[int, int]]:
        """The target modules and their (d, k)."""
        return dict(self.shapes)

    def train(self, plan: TrainingPlan, data: Any, hp: TrainHyper, progress: bool = True) -> TrainResult:
        """Random factors (or dense deltas) instead of training."""
        if plan.dense:
            dense = {m: self.scale * torch.randn(d, k, generator=self.gen, dtype=torch.float64) for m, (d, k) in self.shapes.items()}
            return TrainResult(LocalUpdate(dense=dense), self.n, [1.0], 1.0, 0.9)
        adapter = {}
        for m, (d, k) in self.shapes.items():
            a = (plan.init[m].A.to(torch.float64) if plan.init and m in plan.init and not plan.train_a
                 else self.scale * torch.randn(plan.rank, k, generator=self.gen, dtype=torch.float64))
            b = self.scale * torch.randn(d, plan.rank, generator=self.gen, dtype=torch.float64)
            adapter[m] = LoraFactors(A=a.to(torch.float32), B=b.to(torch.float32), scaling=plan.scaling)
        return TrainResult(LocalUpdate(adapter=adapter), self.n, [1.0], 1.0, 0.9)


def standin_loop(address: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes, *, shapes: Mapping[str, tuple[int, int]],
                 fingerprint: str, state_dir: Path, n: int = 10, rank: int = 2, alpha: float = 4.0,
                 task: str = "causal-lm", seed: int = 0, loop_class: type[AgentLoop] = AgentLoop,
                 server_name: str = "localhost", max_backoff: float = 2.0,
                 give_up_after: float | None = None) -> AgentLoop:
    """A real agent loop (own mTLS channel, real secure-sum client) around a ``StandInTrainer``."""
    trainer = StandInTrainer(shapes, n, seed)
    transport = Transport(channel(address, ca_pem, cert_pem, key_pem, server_name), max_backoff=max_backoff,
                          give_up_after=give_up_after)
    hello = hello_request(trainer, fingerprint, n, rank, alpha, task, "standin")
    return loop_class(transport, trainer, None, hello, alpha, state_dir, progress=False,
                      secure_sum=SecureSumClient(ca_pem, cert_pem, key_pem))
