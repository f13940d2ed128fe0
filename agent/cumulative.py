"""The stacking rules' cumulative global update, applied beside the resident base without copying it.

Theory of operation
-------------------
Stacking rules (``stack``, ``secure-stack``) ask every site to train a fresh LoRA on
``W + ΔW_c`` where ``ΔW_c = s·B·A`` is the cumulative published update (``TrainingPlan.merge``).
Writing ``W + ΔW_c`` into the weights needs either a copy of the base (to start the next round
from ``W`` again) or a base that can hold the sum exactly, which a 4-bit or 8-bit base cannot.

``FrozenDelta`` leaves ``W`` alone: a forward hook on each target module adds
``x·(s·B·A)ᵀ = ((x·Aᵀ)·(s·B)ᵀ)`` to the module's output, with ``A`` and ``s·B`` held frozen on
the module's device. The hooked module is the base ``Linear`` itself (PEFT's LoRA layer calls it
as ``base_layer``), so the trainable LoRA stacks on top exactly as it would on merged weights,
and a quantized ``Linear4bit``/``Linear8bitLt`` works the same way. The only difference from
the merged forward is floating-point association (``W·x + ΔW_c·x`` against ``(W + ΔW_c)·x``).
Memory: ``r_c·(d + k)`` numbers per target instead of the ``d·k`` of a copy; ``remove`` takes
the hooks off and the base is exactly as loaded.

Dense updates (``TrainingPlan.merge_dense``, the ``dense`` rule) are full rank: ``DenseOverlay``
swaps a target's weight tensor for a float32 ``W + ΔW`` (the dense rule trains those weights
anyway, so it needs that float32 master) and ``restore`` puts the original tensor back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch.utils.hooks import RemovableHandle

from ..strategies.lora import Adapter, DenseUpdate


class CumulativeError(ValueError):
    """A cumulative update that does not fit the base model's target modules."""


def _linear_weight(modules: Mapping[str, torch.nn.Module], name: str) -> torch.Tensor:
    if name not in modules:
        raise CumulativeError(f"cannot merge into {name!r}: the base model has no such module weight")
    weight = getattr(modules[name], "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise CumulativeError(f"cannot merge into {name!r}: the base model has no such module weight")
    return weight


def _module_shape(module: torch.nn.Module, weight: torch.Tensor) -> tuple[int, int]:
    """(d_out, k_in) of a Linear, also when its weight is stored packed (bitsandbytes 4-bit)."""
    out_f, in_f = getattr(module, "out_features", None), getattr(module, "in_features", None)
    if isinstance(out_f, int) and isinstance(in_f, int):
        return out_f, in_f
    return int(weight.shape[0]), int(weight.shape[1])


@dataclass
class FrozenDelta:
    """Forward hooks adding a frozen low-rank ``s·B·A`` to target modules' outputs (see module doc)."""

    handles: list[RemovableHandle] = field(default_factory=list)

    @classmethod
    def attach(cls, model: torch.nn.Module, adapter: Adapter) -> FrozenDelta:
        """Hook every module ``adapter`` names; the factors go to the module's device, frozen."""
        modules = dict(model.named_modules())
        hooks = cls()
        try:
            for name, f in sorted(adapter.items()):
                weight = _linear_weight(modules, name)
                want = (int(f.B.shape[0]), int(f.A.shape[1]))
                shape = _module_shape(modules[name], weight)
                if shape != want:
                    raise CumulativeError(f"cannot merge into {name!r}: update is {want}, weight is {shape}")
                a = f.A.detach().to(device=weight.device, dtype=torch.float32).contiguous()
                sb = (f.scaling * f.B.detach().to(torch.float64)).to(device=weight.device, dtype=torch.float32)
                hooks.handles.append(modules[name].register_forward_hook(_delta_hook(a, sb.contiguous())))
        except BaseException:
            hooks.remove()
            raise
        return hooks

    def remove(self) -> None:
        """Take every hook off (idempotent); the modules compute ``W·x`` alone again."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _delta_hook(a: torch.Tensor, sb: torch.Tensor) -> Any:
    def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        x = inputs[0]
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        low = torch.nn.functional.linear(x.to(dtype), a.to(dtype))
        return output + torch.nn.functional.linear(low, sb.to(dtype)).to(output.dtype)

    return hook


@dataclass
class DenseOverlay:
    """Target weights swapped for float32 working copies; ``restore`` puts the originals back."""

    originals: dict[str, tuple[torch.nn.Module, torch.Tensor]] = field(default_factory=dict)

    @classmethod
    def apply(cls, model: torch.nn.Module, names: Mapping[str, Any], deltas: DenseUpdate | None) -> DenseOverlay:
        """Give every target in ``names`` a float32 copy of its weight, plus ``deltas[name]`` (float64 sum)."""
        modules = dict(model.named_modules())
        overlay = cls()
        deltas = deltas or {}
        try:
            for name in deltas:
                weight = _linear_weight(modules, name)
                if tuple(weight.shape) != tuple(deltas[name].shape):
                    raise CumulativeError(f"cannot merge into {name!r}: update is {tuple(deltas[name].shape)}, "
                                          f"weight is {tuple(weight.shape)}")
            for name in sorted(set(names) | set(deltas)):
                weight = _linear_weight(modules, name)
                work = weight.detach().to(torch.float64 if name in deltas else torch.float32, copy=True)
                if name in deltas:
                    work += deltas[name].to(device=work.device, dtype=torch.float64)
                overlay.originals[name] = (modules[name], weight.data)
                weight.data = work.to(torch.float32)
        except BaseException:
            overlay.restore()
            raise
        return overlay

    def restore(self) -> None:
        """Put every original weight tensor back (idempotent)."""
        for module, original in self.originals.values():
            weight = getattr(module, "weight")
            weight.requires_grad_(False)
            weight.data = original
        self.originals.clear()
