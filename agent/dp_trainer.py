"""``DPLoraTrainer``: the agent's ``LoraTrainer`` with record-level DP-SGD (Opacus) in its hooks.

Theory of operation. ``train`` first asks the site's ``PrivacySite`` whether a round of this
length fits the budget, before the model is even prepared, so an exhausted site declines
cheaply with ``BudgetExhausted``. Then ``LoraTrainer`` runs as usual and calls the hooks:

* ``_prepare``: the model is already on its device; ``make_private`` wraps it, the optimizer and
  the loader (Poisson batches) for at most ``planned_steps`` steps;
* ``_loss``: ``PrivateRun.batch_loss``, the mean over records of each record's loss (a zero loss,
  hence a noise-only step, for an empty Poisson batch);
* ``_clip_gradients``: nothing, Opacus clips every record's gradient to ``max_grad_norm`` of the
  DP configuration (``TrainHyper.max_grad_norm`` does not apply under DP);
* after the loop and **before** the after-training evaluation, ``PrivacySite.close`` finishes the
  run: the steps taken are recorded in the ledger, the hooks removed, (ε, δ) computed. A loop that
  fails half-way still records its steps (their noisy updates happened).

The result is a ``DPTrainResult``: a ``TrainResult`` with the round's ``PrivacyReport``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..contract import TrainHyper
from ..strategies.base import TrainingPlan
from .config import Quantization
from .privacy import PrivateRun
from .privacy_ledger import PrivacyError
from .privacy_session import PrivacyReport, PrivacySite
from ..strategies.adapters import Task
from .trainer import Batch, LoraTrainer, TrainerError, TrainResult


@dataclass
class DPTrainResult(TrainResult):
    """A ``TrainResult`` trained under DP-SGD, with its (ε, δ) report."""

    privacy: PrivacyReport | None = None


class DPLoraTrainer(LoraTrainer):
    """``LoraTrainer`` whose every round is DP-SGD against the site's persistent privacy ledger."""

    def __init__(
        self,
        model_dir: Path,
        task: Task,
        target_modules: Sequence[str],
        privacy: PrivacySite,
        device: str = "auto",
        seed: int | None = None,
        quantization: Quantization = Quantization.NONE,
        num_labels: int | None = None,
        head_seed: int | None = None,
    ) -> None:
        """Load the base model as ``LoraTrainer`` does; train under ``privacy``'s settings."""
        super().__init__(model_dir, task, target_modules, device=device, seed=seed, quantization=quantization,
                         num_labels=num_labels, head_seed=head_seed)
        self.privacy = privacy
        self._run: PrivateRun | None = None
        self._report: PrivacyReport | None = None

    def round_length(self, data: Dataset[Batch], hp: TrainHyper) -> tuple[int, float]:
        """(steps, sample rate) a round on ``data`` with ``hp`` takes, exactly as ``fit`` plans it."""
        batches = len(self._loader(data, hp.batch_size, shuffle=False))
        if batches == 0:
            raise TrainerError("the local dataset is empty")
        steps = hp.local_steps if hp.local_steps is not None else (hp.epochs or 1) * batches
        return steps, 1.0 / batches

    def train(
        self, plan: TrainingPlan, data: Dataset[Batch], hp: TrainHyper, progress: bool = True
    ) -> DPTrainResult:
        """Check the budget, then train one DP round; raises ``BudgetExhausted`` past the budget."""
        self.privacy.check(*self.round_length(data, hp))
        result = super().train(plan, data, hp, progress)
        if not isinstance(result, DPTrainResult):
            raise PrivacyError(f"fit returned {type(result).__name__}, not a DPTrainResult")
        return result

    def fit(
        self, model: torch.nn.Module, plan: TrainingPlan, data: Dataset[Batch], hp: TrainHyper,
        progress: bool = True,
    ) -> DPTrainResult:
        """Train ``model`` privately and read its update back with the round's privacy report."""
        self._report = None
        result = super().fit(model, plan, data, hp, progress)
        report, self._report = self._report, None
        if report is None:
            raise PrivacyError("the DP round ended without a privacy report (was the loop skipped?)")
        values = {f.name: getattr(result, f.name) for f in fields(result)}
        return DPTrainResult(**values, privacy=report)

    # ---- LoraTrainer hooks ---------------------------------------------------------------------

    def _prepare(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader[Batch]
    ) -> tuple[torch.nn.Module, torch.optim.Optimizer, DataLoader[Batch]]:
        """Wrap for DP-SGD (the model is already on its device, as Opacus needs)."""
        self._run = self.privacy.start(model, optimizer, loader, self.planned_steps)
        wrapped, dp_optimizer, dp_loader = self._run.prepared()
        return wrapped, dp_optimizer, dp_loader

    def _loop(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader[Batch],
        params: list[torch.nn.Parameter], hp: TrainHyper, steps: int, progress: bool,
    ) -> list[float]:
        """The training loop, then ``close`` the DP run before anything evaluates the model."""
        try:
            with warnings.catch_warnings():
                # Opacus's hooks on a model whose inputs (token ids) need no gradient: expected, harmless.
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                losses = super()._loop(model, optimizer, loader, params, hp, steps, progress)
        except BaseException:
            self._abandon_run()
            raise
        run, self._run = self._run, None
        if run is None:
            raise PrivacyError("the training loop ran without a DP run (_prepare was not called)")
        self._report = self.privacy.close(run)
        return losses

    def _abandon_run(self) -> None:
        """Record the steps of a failed loop; the loop's own error is the one to report."""
        run, self._run = self._run, None
        if run is not None:
            with contextlib.suppress(PrivacyError):
                self.privacy.close(run)

    def _loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """Per-record mean loss under DP (noise-only step for an empty batch); HF's loss otherwise."""
        if self._run is None:
            return super()._loss(model, batch)
        if not batch:
            return self._run.empty_loss()
        loss: torch.Tensor = self._run.batch_loss(model, batch)
        return loss

    def _clip_gradients(self, params: list[torch.nn.Parameter], hp: TrainHyper) -> None:
        """Nothing under DP (Opacus clips per record); batch clipping outside a DP run."""
        if self._run is None:
            super()._clip_gradients(params, hp)

    def _to_device(self, batch: Any) -> Batch:
        """Move a batch; Opacus's empty *first* Poisson batch (a list) becomes the empty dict."""
        if not isinstance(batch, Mapping):
            return {}
        return super()._to_device(dict(batch))
