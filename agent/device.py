"""Where local training runs and in which precision.

``"auto"`` picks CUDA when present (the GPU of this process's ``LOCAL_RANK`` under
``torchrun``/``accelerate``) with frozen base weights in bfloat16 and bfloat16 autocast where the
GPU supports it, and the CPU in float32 otherwise. Trained parameters (LoRA factors, dense
targets) are always kept in float32 by the trainer.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import ContextManager

import torch


@dataclass(frozen=True)
class Placement:
    """A resolved device with the dtype its weights load in and the autocast dtype (if any)."""

    device: torch.device
    dtype: torch.dtype
    """Dtype the base weights are loaded in."""
    autocast: torch.dtype | None
    """Dtype of the forward pass under autocast; ``None`` means no autocast."""

    def autocast_context(self) -> ContextManager[object]:
        """A context manager that runs forward passes in ``autocast`` (a no-op without it)."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast)


def _bf16_supported() -> bool:
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def resolve(device: str = "auto", dtype: torch.dtype | None = None) -> Placement:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` into a ``Placement``.

    ``dtype`` overrides the load dtype; by default the CPU loads float32 and CUDA loads bfloat16
    (with bfloat16 autocast) when the GPU supports it, float32 otherwise.
    """
    if device == "auto":
        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        else:
            device = "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for but CUDA is not available")
        bf16 = _bf16_supported()
        autocast = torch.bfloat16 if bf16 else None
        return Placement(dev, dtype or (torch.bfloat16 if bf16 else torch.float32), autocast)
    if dev.type != "cpu":
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return Placement(dev, dtype or torch.float32, None)
