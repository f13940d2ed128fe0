"""Training a plan's ``modules_to_save`` densely: find their parameters, start them, read them back.

With LoRA the modules are wrapped by PEFT (``ModulesToSaveWrapper``: a trainable copy under
``modules_to_save.default``, the original frozen beside it); with the ``dense`` rule they are the
model's own modules, unfrozen. Either way a parameter is named ``<module>.<param>`` exactly as in
the base model (``classifier.weight``), which is also how PEFT names it in a saved adapter.
"""

from __future__ import annotations

from typing import Mapping

import torch

from ..strategies.base import TrainingPlan
from ..strategies.saved_modules import matches

_PEFT_PREFIX = "base_model.model."


class SavedModuleError(ValueError):
    """A plan's ``modules_to_save`` do not fit the model."""


def saved_parameters(model: torch.nn.Module, suffixes: tuple[str, ...]) -> dict[str, torch.nn.Parameter]:
    """``<module>.<param>`` -> the trainable parameter, for every module named by ``suffixes``."""
    if not suffixes:
        return {}
    out: dict[str, torch.nn.Parameter] = {}
    for name, module in model.named_modules():
        if type(module).__name__ == "ModulesToSaveWrapper":
            path = name[len(_PEFT_PREFIX):] if name.startswith(_PEFT_PREFIX) else name
            inner: torch.nn.Module = getattr(module, "modules_to_save")["default"]
            out.update({f"{path}.{p}": param for p, param in inner.named_parameters()})
    if out:
        return out
    for name, module in model.named_modules():
        if matches(name, suffixes) and not any(name.startswith(k + ".") for k in out):
            out.update({f"{name}.{p}": param for p, param in module.named_parameters()})
    if not out:
        raise SavedModuleError(f"modules_to_save {list(suffixes)} match no module of the base model")
    return out


def start_saved(model: torch.nn.Module, plan: TrainingPlan) -> None:
    """Make the plan's saved modules trainable (float32) and copy ``plan.saved_init`` into them."""
    params = saved_parameters(model, plan.modules_to_save)
    init: Mapping[str, torch.Tensor] = plan.saved_init or {}
    unknown = sorted(set(init) - set(params))
    if unknown:
        raise SavedModuleError(f"the global carries modules_to_save parameters this model lacks: {unknown[:3]}")
    with torch.no_grad():
        for name, p in params.items():
            p.data = p.data.to(torch.float32)
            if name in init:
                if tuple(init[name].shape) != tuple(p.shape):
                    raise SavedModuleError(f"{name}: the global holds {tuple(init[name].shape)}, the model {tuple(p.shape)}")
                p.copy_(init[name].to(p.dtype))
            p.requires_grad_(True)


def read_saved(model: torch.nn.Module, plan: TrainingPlan) -> dict[str, torch.Tensor] | None:
    """The trained values of the plan's saved modules (``None`` when it has none)."""
    if not plan.modules_to_save:
        return None
    return {n: p.detach().to(torch.float32).cpu().clone()
            for n, p in saved_parameters(model, plan.modules_to_save).items()}
