"""Modules a federation trains densely next to its LoRA factors (PEFT's ``modules_to_save``).

Theory of operation
-------------------
A pretrained encoder or decoder used as a classifier gets a *new* head. If every process drew
its own, each site's update would sit on its own random head and the consumer would load yet
another. Here the head is federated state, like the adapter:

* round one: every site starts from the same head, initialised from a public seed that the
  base-model fingerprint covers (``agent.basemodel``);
* each round the site trains the head's parameters θ densely (PEFT ``modules_to_save``) and
  submits ``n·θ_i`` under ``<module>.<param>/saved`` in the rule's **last** phase, inside the
  same secure sum as the rule's own vectors (no extra phase, nothing in the clear);
* the server sets θ̄ = Σ n_i θ_i / Σ n_i (FedAvg of the parameters, exact), carries it in
  ``Aggregate.saved``, sends it with the global and publishes it as PEFT ``modules_to_save``,
  so stock ``PeftModel.from_pretrained`` loads exactly the head the federation trained;
* the next round every site starts from θ̄.

``SavedModules`` wraps any sums-only rule; with no saved modules in the round it changes nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import torch

from .base import Aggregate, Broadcast, TrainingPlan, Vectors
from .rule import PhaseSums, SiteStart, Submission, WrappedRule
from .submission import key, weighted

SUFFIX = "saved"
"""Vector-name suffix of a dense module parameter: ``<module>.<param>/saved``."""


def saved_key(param: str) -> str:
    """The vector name of the dense parameter ``param`` (``<module>.<param>``)."""
    return key(param, SUFFIX)


def is_saved_key(name: str) -> bool:
    """Whether a vector name carries a dense module parameter."""
    return name.endswith("/" + SUFFIX)


def module_of(param: str) -> str:
    """``classifier.weight`` -> ``classifier`` (the module holding a parameter)."""
    return param.rsplit(".", 1)[0] if "." in param else param


def matches(module: str, suffixes: Sequence[str]) -> bool:
    """Whether ``module`` is named by one of ``suffixes`` (PEFT's suffix matching of ``modules_to_save``)."""
    return any(module == s or module.endswith("." + s) for s in suffixes)


def check_saved(params: Mapping[str, Any], suffixes: Sequence[str], what: str) -> None:
    """Raise ``ValueError`` unless every parameter belongs to a declared saved module."""
    bad = sorted(p for p in params if not matches(module_of(p), suffixes))
    if bad:
        raise ValueError(f"{what} holds parameters of modules not in modules_to_save {list(suffixes)}: {bad[:3]}")


class SavedModules(WrappedRule):
    """Wrap a sums-only rule so that the round's ``modules_to_save`` are trained and averaged densely."""

    def plan(self, start: SiteStart) -> TrainingPlan:
        """The inner rule's plan, plus the saved modules and their start (the global's, if any)."""
        plan = super().plan(start)
        glob, saved = start.glob, start.ctx.saved
        if not saved:
            return plan
        init = dict(glob.saved) if glob is not None and glob.saved else None
        if init is not None:
            check_saved(init, saved, "the global state")
        return dataclasses.replace(plan, modules_to_save=tuple(saved), saved_init=init)

    def submit(self, submission: Submission) -> Vectors:
        """The inner rule's vectors; in the last phase also ``n·θ`` of every saved parameter."""
        out = super().submit(submission)
        update, saved = submission.update, submission.ctx.saved
        if not saved or submission.phase != self.phases - 1:
            return out
        if not update.saved:
            raise ValueError(f"the round trains modules_to_save {list(saved)} but the update has none")
        check_saved(update.saved, saved, "the trained update")
        for param, value in sorted(update.saved.items()):
            out[saved_key(param)] = weighted(value, submission.n)
        return out

    def aggregate(self, sums: PhaseSums) -> Broadcast | Aggregate:
        """The inner rule on its own sums; the saved parameters averaged into ``Aggregate.saved``."""
        inner_sums = {k: v for k, v in sums.sums.items() if not is_saved_key(k)}
        out = super().aggregate(dataclasses.replace(sums, sums=inner_sums))
        names = sorted(k for k in sums.sums if is_saved_key(k))
        saved_modules = sums.ctx.saved
        if not isinstance(out, Aggregate) or not names:
            if isinstance(out, Aggregate) and saved_modules:
                raise ValueError(f"the round trains modules_to_save {list(saved_modules)} but the sums carry none")
            return out
        total = sums.total
        saved = {k[: -len(SUFFIX) - 1]: sums.mean(k, total).to(torch.float32) for k in names}
        check_saved(saved, saved_modules, "the sums")
        return dataclasses.replace(out, saved=saved, info={**out.info, "modules_to_save": sorted(saved)})
