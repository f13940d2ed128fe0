"""What a consumer of a simulated federation would get: the published adapter on the base, scored.

The global state goes through the coordinator's own ``publishable_adapter`` (dense updates factored
by SVD as they would be published), ΔW = s·B·A is added to the target weights of one base model kept
for evaluation (the originals restored before every evaluation) and the federated ``modules_to_save``
parameters replace the head. Scores: accuracy and mean cross-entropy for ``seq-cls``; for ``causal-lm``
the mean loss over all predicted tokens of the held-out rows (not a mean of per-batch means, which
would over-weight short rows) and its exponential, the perplexity.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader

from ..agent.basemodel import load_base
from ..agent.data import TokenizedDataset
from ..agent.trainer import loss_weight
from ..coordinator.publish import publishable_adapter
from ..strategies.base import Aggregate
from ..strategies.adapters import Task



class Evaluator:
    """Scores global states on held-out rows with one resident copy of the base model."""

    def __init__(self, model_dir: Path, task: Task, num_labels: int | None, head_seed: int, batch_size: int = 64) -> None:
        """Load the base once (the seeded head, as every site has it)."""
        self.task = task
        self.model, self.tokenizer = load_base(model_dir, task, device="cpu", num_labels=num_labels, head_seed=head_seed)
        torch.nn.Module.eval(self.model)
        self.batch_size = batch_size
        self._originals: dict[str, torch.Tensor] = {}

    def _param(self, name: str) -> torch.nn.Parameter:
        return self.model.get_parameter(name)

    def _load(self, agg: Aggregate | None) -> None:
        with torch.no_grad():
            for name, value in self._originals.items():
                self._param(name).copy_(value)
            if agg is None:
                return
            adapter, _ = publishable_adapter(agg)
            for module, f in adapter.items():
                name = f"{module}.weight"
                p = self._param(name)
                self._originals.setdefault(name, p.detach().clone())
                p.copy_((p.to(torch.float64) + f.delta()).to(p.dtype))
            for name, value in (agg.saved or {}).items():
                p = self._param(name)
                self._originals.setdefault(name, p.detach().clone())
                p.copy_(value.to(p.dtype))

    def score(self, agg: Aggregate | None, data: TokenizedDataset) -> dict[str, Any]:
        """Accuracy and loss (seq-cls) or loss and perplexity (causal-lm) of ``agg`` on ``data``."""
        self._load(agg)
        loader = DataLoader(data, batch_size=self.batch_size, shuffle=False, collate_fn=data.collate)
        loss_sum, weight_sum, correct, count = 0.0, 0.0, 0, 0
        with torch.no_grad():
            for batch in loader:
                out = self.model(**batch)
                # The batch's loss is a mean over its rows (seq-cls) or its predicted tokens (causal-lm):
                # weighting by the same count makes the total the mean over all rows or all tokens.
                weight = loss_weight(batch)
                loss_sum += float(out.loss) * weight
                weight_sum += weight
                if self.task == "seq-cls":
                    correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
                count += int(batch["input_ids"].shape[0])
        loss = loss_sum / max(weight_sum, 1.0)
        if self.task == "seq-cls":
            return {"accuracy": correct / max(count, 1), "loss": loss}
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": int(weight_sum)}
