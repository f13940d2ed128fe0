"""What both halves of a round derive from the signed round spec, in one place.

The agent and the coordinator each run one half of a rule. Every quantity both halves use to shape
vectors (the ranks that decide zero-padding and sketch widths, the session randomness, the rule's
parameters) must come from the same source, or a site that drops out of training changes the shapes
on one side only. That source is the round spec: the cohort the round was opened with, not whoever
happens to finish. ``round_context`` is the only constructor of a round's ``RoundContext``.

The global state both sides hold between rounds (``Aggregate``) travels as safetensors bytes in the
layout ``encode_aggregate`` writes: ``<module>|A``, ``|B``, ``|s`` for LoRA factors, ``|dense`` for dense
deltas, ``|saved`` for densely trained modules such as a classification head.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .proto.codec import CodecError, decode_tensors, encode_tensors
from .proto.round_spec import RoundSpec
from .strategies.base import Aggregate, RoundContext
from .strategies.lora import LoraFactors


DEFAULT_EVAL_BATCHES = 1
"""Batches each evaluation reads by default: a fixed cost per round (two forward batches: before and after
training, three with held-out data), whatever the dataset size."""


class TrainHyper(BaseModel):
    """Local training hyper-parameters; exactly one of ``local_steps`` / ``epochs`` is set."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    local_steps: int | None = Field(default=None, gt=0)
    epochs: int | None = Field(default=None, gt=0)
    batch_size: int = Field(default=8, gt=0)
    lr: float = Field(default=1e-3, gt=0, allow_inf_nan=False)
    weight_decay: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    max_grad_norm: float | None = Field(default=1.0, gt=0, allow_inf_nan=False)
    optimizer: Literal["adamw", "sgd", "galore-adamw"] = "adamw"
    """``galore-adamw``: GaLore's low-rank-projected AdamW (``pip install galore-torch``) for dense training."""
    galore_rank: int = Field(default=128, gt=0)
    galore_update_proj_gap: int = Field(default=200, gt=0)
    galore_scale: float = Field(default=0.25, gt=0, allow_inf_nan=False)
    eval_batches: int | None = Field(default=DEFAULT_EVAL_BATCHES, gt=0)
    """Batches read by each evaluation (``loss_before``, ``loss_after``, ``eval_loss``); ``None``: the whole dataset."""
    # --- issue 14: FedProx ---
    prox_mu: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    """FedProx's μ (Li et al. 2020): adds μ·(θ − θ_start) to every step's (clipped) gradient, i.e. the
    proximal term μ/2·‖θ − θ_start‖² on the trainable parameters; 0 turns it off."""

    @model_validator(mode="after")
    def _one_length(self) -> TrainHyper:
        if (self.local_steps is None) == (self.epochs is None):
            raise ValueError(
                f"set exactly one of local_steps or epochs, got local_steps={self.local_steps}, epochs={self.epochs}"
            )
        return self


def round_context(spec: RoundSpec, session: bytes | None = None) -> RoundContext:
    """The rule context of ``spec``'s round: its shapes, the cohort's ranks, its rule parameters, and as public
    randomness ``session`` (a secure sum's session id) or else the round's nonce, and the modules trained densely
    beside the adapter (``modules_to_save``)."""
    return RoundContext(round=spec.round, shapes=spec.shapes, ranks=dict(spec.ranks),
                        session=session or bytes.fromhex(spec.nonce), params=spec.params,
                        saved=tuple(spec.modules_to_save))


def encode_aggregate(agg: Aggregate | None) -> bytes:
    """A global state (``strategies.base.Aggregate``) -> safetensors bytes (None -> b"")."""
    if agg is None:
        return b""
    out: dict[str, np.ndarray] = {}
    for name, f in (agg.adapter or {}).items():
        out[f"{name}|A"] = f.A.detach().cpu().numpy().astype(np.float32)
        out[f"{name}|B"] = f.B.detach().cpu().numpy().astype(np.float32)
        out[f"{name}|s"] = np.array([f.scaling], np.float64)
    for name, d in (agg.dense or {}).items():
        out[f"{name}|dense"] = d.detach().cpu().numpy().astype(np.float32)
    for name, t in (agg.saved or {}).items():
        out[f"{name}|saved"] = t.detach().cpu().numpy().astype(np.float32)
    return encode_tensors(out)


def decode_aggregate(data: bytes) -> Aggregate | None:
    """Inverse of ``encode_aggregate``."""
    tensors = decode_tensors(data)
    if not tensors:
        return None
    adapter: dict[str, LoraFactors] = {}
    dense: dict[str, torch.Tensor] = {}
    saved: dict[str, torch.Tensor] = {}
    for key in tensors:
        name, _, part = key.rpartition("|")
        if part == "A":
            try:
                adapter[name] = LoraFactors(
                    A=torch.from_numpy(tensors[key].copy()),
                    B=torch.from_numpy(tensors[f"{name}|B"].copy()),
                    scaling=float(tensors[f"{name}|s"][0]),
                )
            except (KeyError, ValueError) as exc:
                raise CodecError(f"malformed global adapter entry {name!r}: {exc}") from None
        elif part == "dense":
            dense[name] = torch.from_numpy(tensors[key].copy())
        elif part == "saved":
            saved[name] = torch.from_numpy(tensors[key].copy())
        elif part not in ("B", "s"):
            raise CodecError(f"unknown global tensor {key!r}")
    return Aggregate(adapter=adapter or None, dense=dense or None, saved=saved or None)
