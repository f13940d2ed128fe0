"""Record-level DP-SGD (Opacus) on a PEFT LoRA model, with a privacy budget that persists.

Theory of operation. Each round, ``make_private`` wraps the trainer's model, optimizer and loader
with ``opacus.PrivacyEngine``: per-sample gradients (forward/backward hooks, or ghost clipping
which never materialises them) are clipped to ``max_grad_norm`` and Gaussian noise of std
``noise_multiplier * max_grad_norm`` is added to their sum. Before any step is taken, the site's
``PrivacyLedger`` (the accountant history ``(noise_multiplier, sample_rate, steps)`` of every
round so far, kept as JSON next to the data) is asked what ε the planned round would bring; past
the budget the round is refused with ``BudgetExhausted``. ``PrivateRun.finish()`` appends the
steps actually taken and saves the ledger atomically, so the reported (ε, δ) covers every step of
every round, across restarts.

Known traps, checked here rather than left to luck:

* Move the model to its device **before** wrapping. Opacus hooks the modules and the optimizer
  holds the parameter objects present at wrapping time; a model moved, re-wrapped or copied
  afterwards trains through objects that are not the model's, and LoRA weights silently never
  update. ``make_private`` raises if trainable parameters sit on different devices or are missing
  from the optimizer; ``finish()`` raises if DP steps were taken but no trainable weight moved.
* Opacus computes no per-sample gradients for PEFT's LoRA-on-embedding layers
  (``lora_embedding_A/B``); such models are refused with ``UnsupportedConfiguration``.
* The privacy unit is one record (sequence). The loss must be a mean of per-record losses, not
  HF's token mean over the whole batch; use ``PrivateRun.loss`` (or ``SequenceLoss``).

The ledger and the errors live in ``privacy_ledger``, optional site-level noise in ``site_noise``;
both are re-exported here. ``dp_trainer.DPLoraTrainer`` wires this module into the agent's trainer.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping
from enum import StrEnum
from types import TracebackType
from typing import Any

import torch
from opacus import PrivacyEngine  # type: ignore[import-untyped]
from opacus.accountants.utils import get_noise_multiplier  # type: ignore[import-untyped]
from opacus.validators.errors import UnsupportedError  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, model_validator
from torch import nn

from .privacy_ledger import (
    Accountant,
    BudgetExhausted,
    HistoryEntry,
    PrivacyError,
    PrivacyLedger,
    StepLimitExceeded,
    UnsupportedConfiguration,
    merge_history,
    accountant_epsilon,
)
from .site_noise import clip_and_noise_update, site_level_epsilon_amplified as site_level_epsilon

__all__ = [
    "Accountant", "BudgetExhausted", "ClipMode", "DPConfig", "HistoryEntry", "PrivacyError", "PrivacyLedger",
    "PrivateRun", "SequenceLoss", "StepLimitExceeded", "UnsupportedConfiguration", "accountant_epsilon",
    "check_model", "clip_and_noise_update", "make_private", "merge_history", "noise_for", "site_level_epsilon",
]


class ClipMode(StrEnum):
    """How per-sample gradients are clipped."""

    HOOKS = "hooks"
    GHOST = "ghost"


class DPConfig(BaseModel):
    """Site DP-SGD settings; exactly one of ``noise_multiplier`` / ``target_epsilon``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    planned_rounds: int | None = None
    max_epsilon: float | None = None
    mode: ClipMode = ClipMode.HOOKS
    poisson_sampling: bool = True
    accountant: Accountant = Accountant.RDP

    @model_validator(mode="after")
    def _check(self) -> DPConfig:
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError(
                "exactly one of noise_multiplier and target_epsilon must be set, got "
                f"noise_multiplier={self.noise_multiplier}, target_epsilon={self.target_epsilon}"
            )
        _positive("max_grad_norm", self.max_grad_norm)
        if self.noise_multiplier is not None and not self.noise_multiplier >= 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if self.target_epsilon is not None:
            _positive("target_epsilon", self.target_epsilon)
            if self.planned_rounds is None:
                raise ValueError("planned_rounds is required with target_epsilon, got None")
        if self.planned_rounds is not None and self.planned_rounds < 1:
            raise ValueError(f"planned_rounds must be >= 1, got {self.planned_rounds}")
        if self.max_epsilon is not None:
            _positive("max_epsilon", self.max_epsilon)
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        return self

    @property
    def budget(self) -> float | None:
        """The ε this site may never exceed (``max_epsilon``, else ``target_epsilon``)."""
        return self.max_epsilon if self.max_epsilon is not None else self.target_epsilon


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be > 0, got {value}")


class SequenceLoss(nn.Module):
    """Mean over records of each record's loss: token-mean CE for (B, T, V) logits, CE for (B, C).

    Causal-LM logits are shifted against ``labels`` (HF convention, -100 ignored). ``reduction``
    follows ``nn.CrossEntropyLoss`` so Opacus's ghost clipping can ask for per-record losses.
    """

    def __init__(self, reduction: str = "mean") -> None:
        """Create the loss with ``reduction`` in {"mean", "sum", "none"}."""
        super().__init__()
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-record losses reduced as ``self.reduction`` says."""
        if logits.dim() == 3:
            lg, lb = logits[:, :-1, :].float(), labels[:, 1:]
            tok = nn.functional.cross_entropy(
                lg.reshape(-1, lg.shape[-1]), lb.reshape(-1), ignore_index=-100, reduction="none"
            ).view(lb.shape)
            per = tok.sum(dim=1) / (lb != -100).sum(dim=1).clamp(min=1)
        elif logits.dim() == 2:
            per = nn.functional.cross_entropy(logits.float(), labels, reduction="none")
        else:
            raise ValueError(f"logits must be (B, T, V) or (B, C), got shape {tuple(logits.shape)}")
        if self.reduction == "none":
            return per
        if self.reduction == "sum":
            return per.sum()
        return per.sum() / max(per.shape[0], 1)


def check_model(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Refuse models Opacus cannot train privately, or that would silently not train."""
    if hasattr(model, "autograd_grad_sample_hooks"):
        raise UnsupportedConfiguration(
            "model already carries Opacus hooks from a PrivateRun that was not finished; "
            "call finish() on it before wrapping the model again"
        )
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise UnsupportedConfiguration("model has no trainable parameters to train privately")
    embedding_lora = [n for n, _ in trainable if "lora_embedding_" in n]
    if embedding_lora:
        raise UnsupportedConfiguration(
            f"LoRA on embedding layers is not supported under DP (Opacus computes no per-sample "
            f"gradients for it): {embedding_lora[0]}; drop embedding modules from target_modules"
        )
    dora = [n for n, _ in trainable if "lora_magnitude_vector" in n]
    if dora:
        raise UnsupportedConfiguration(
            f"DoRA (use_dora=True) is not supported under DP (Opacus computes no per-sample "
            f"gradients for its magnitude vectors): {dora[0]}"
        )
    first_name, first = trainable[0]
    for name, p in trainable:
        if p.device != first.device:
            raise UnsupportedConfiguration(
                f"trainable parameter {name} is on {p.device} but {first_name} is on "
                f"{first.device}: move the whole model to its device before make_private"
            )
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    missing = [n for n, p in trainable if id(p) not in in_optimizer]
    if missing:
        raise UnsupportedConfiguration(
            f"trainable parameter {missing[0]} is not in the optimizer (was the model moved or "
            f"re-wrapped after the optimizer was built?); {len(missing)} missing in all"
        )


def noise_for(cfg: DPConfig, sample_rate: float, steps: int) -> float:
    """The noise multiplier: as configured, or calibrated so the whole plan reaches target ε."""
    if cfg.noise_multiplier is not None:
        return cfg.noise_multiplier
    if cfg.target_epsilon is None or cfg.planned_rounds is None:
        raise ValueError("target_epsilon and planned_rounds are required to calibrate noise")
    return _calibrated(cfg.target_epsilon, cfg.delta, sample_rate, cfg.planned_rounds * steps,
                       cfg.accountant)


@functools.lru_cache(maxsize=64)
def _calibrated(epsilon: float, delta: float, q: float, steps: int, acc: Accountant) -> float:
    # Deterministic binary search; cached because every round of a plan asks the same question.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order")
        sigma = get_noise_multiplier(
            target_epsilon=epsilon, target_delta=delta, sample_rate=q, steps=steps,
            accountant=acc.value,
        )
    return float(sigma)


class PrivateRun:
    """One round of DP-SGD: the wrapped training objects, the loss to use, and ``finish()``."""

    def __init__(
        self, engine: Any, hooks: Any, model: nn.Module, optimizer: Any, loader: Any,
        criterion: Any, cfg: DPConfig, ledger: PrivacyLedger, steps: int, noise: float,
    ) -> None:
        """Built by ``make_private``; not meant to be constructed directly."""
        self.engine, self._hooks, self.model = engine, hooks, model
        self.optimizer, self.loader, self.criterion = optimizer, loader, criterion
        self.cfg, self.ledger, self.planned_steps = cfg, ledger, steps
        self.noise_multiplier = noise
        self.sample_rate = 1.0 / len(loader)
        self._result: tuple[float, float] | None = None
        self._fingerprint = self._weights_fingerprint()
        count_step = optimizer.step_hook

        def guarded_step_hook(opt: Any) -> None:
            # Runs after noising, before the update: refusing here means nothing is applied.
            if self.steps_taken >= self.planned_steps:
                raise StepLimitExceeded(
                    f"the budget check cleared {self.planned_steps} DP steps for this round; "
                    f"step {self.planned_steps + 1} refused"
                )
            count_step(opt)

        optimizer.step_hook = guarded_step_hook

    def prepared(self) -> tuple[nn.Module, Any, Any]:
        """(model, optimizer, loader) to train with, e.g. as the trainer's ``_prepare`` result."""
        return self.model, self.optimizer, self.loader

    def loss(self, outputs: Any, batch: Mapping[str, Any]) -> Any:
        """The loss to call ``.backward()`` on, from model outputs (or logits) and the batch."""
        logits = outputs if isinstance(outputs, torch.Tensor) else outputs.logits
        if "labels" not in batch:
            raise KeyError(f"batch has no 'labels' (keys: {sorted(batch)})")
        return self.criterion(logits, batch["labels"])

    def batch_loss(self, model: nn.Module, batch: Mapping[str, Any]) -> Any:
        """Forward ``batch`` (minus labels) and return ``loss`` (``empty_loss`` if it is empty)."""
        if self.is_empty(batch):
            return self.empty_loss()
        return self.loss(model(**{k: v for k, v in batch.items() if k != "labels"}), batch)

    @staticmethod
    def is_empty(batch: Mapping[str, Any]) -> bool:
        """True for an empty Poisson batch (models cannot run on it: use ``empty_loss``)."""
        first = next((v for v in batch.values() if isinstance(v, torch.Tensor)), None)
        return first is not None and first.shape[0] == 0

    def empty_loss(self) -> torch.Tensor:
        """A zero loss that makes the next ``optimizer.step()`` a noise-only DP step.

        Skipping the step of an empty batch instead would reveal that the batch was empty.
        """
        for p in self.optimizer.params:
            if self.cfg.mode is ClipMode.GHOST:
                p.grad = torch.zeros_like(p)
            else:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
        return torch.zeros((), requires_grad=True)

    def empty_step(self) -> None:
        """``empty_loss().backward()``, ``optimizer.step()``, ``optimizer.zero_grad()``."""
        self.empty_loss().backward()  # type: ignore[no-untyped-call, unused-ignore]
        self.optimizer.step()
        self.optimizer.zero_grad()

    @property
    def round_history(self) -> list[HistoryEntry]:
        """This round's accountant entries so far."""
        return [(float(s), float(q), int(n)) for s, q, n in self.engine.accountant.history]

    @property
    def steps_taken(self) -> int:
        """DP optimizer steps taken in this round so far."""
        return sum(n for _, _, n in self.round_history)

    def epsilon(self) -> float:
        """ε over every recorded round plus this round's steps so far."""
        history = merge_history(self.ledger.history, self.round_history)
        return accountant_epsilon(history, self.cfg.delta, self.cfg.accountant)

    def _weights_fingerprint(self) -> torch.Tensor:
        sums = [p.detach().double().sum() for p in self.model.parameters() if p.requires_grad]
        return torch.stack(sums).cpu()

    def finish(self) -> tuple[float, float]:
        """Record the steps taken, save the ledger, detach Opacus; (ε, δ) over all rounds.

        Raises ``PrivacyError`` (after recording) if DP steps were taken but no trainable weight
        of the model changed: the silent failure of a model moved or copied after wrapping.
        """
        if self._result is None:
            self.ledger.record(self.round_history)
            self._hooks.cleanup()
            eps = self.ledger.epsilon(self.cfg.delta, self.cfg.accountant)
            self._result = (eps, self.cfg.delta)
            if self.steps_taken > 0 and torch.equal(self._weights_fingerprint(), self._fingerprint):
                raise PrivacyError(
                    f"no trainable weight changed over {self.steps_taken} DP steps: was the model "
                    "moved or copied after make_private (or is the learning rate 0)?"
                )
        return self._result

    def __enter__(self) -> PrivateRun:
        """Use as ``with make_private(...) as run:``; ``finish()`` runs on exit, even on error."""
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Record whatever steps were taken (noise already spent counts)."""
        self.finish()


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: torch.utils.data.DataLoader[Any],
    cfg: DPConfig,
    ledger: PrivacyLedger,
    steps: int,
    *,
    noise_generator: torch.Generator | None = None,
) -> PrivateRun:
    """Wrap a PEFT model (already on its device) for one DP round of at most ``steps`` steps.

    Raises ``BudgetExhausted`` before anything is wrapped if the round could push ε past the
    budget, ``UnsupportedConfiguration`` for embedding LoRA, mixed devices or parameters missing
    from the optimizer. The model object stays the one passed in (hooks are attached to it and
    removed by ``finish()``), so saving it with PEFT works as usual.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    check_model(model, optimizer)
    sample_rate = 1.0 / len(loader)
    noise = noise_for(cfg, sample_rate, steps)
    budget = cfg.budget
    if budget is not None:
        eps = ledger.would_exceed(steps, sample_rate, noise, budget, cfg.delta, cfg.accountant)
        if eps is not None:
            raise BudgetExhausted(
                f"site privacy budget spent: ε would reach {eps:.2f} after round "
                f"{ledger.rounds + 1} (budget {budget}, δ={cfg.delta}); refusing to train"
            )
    try:
        with warnings.catch_warnings():
            # Both the constructor and make_private warn; see docs/privacy.md, "Secure RNG".
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            engine = PrivacyEngine(accountant=cfg.accountant.value)
            wrapped = engine.make_private(
                module=model, optimizer=optimizer, criterion=SequenceLoss(), data_loader=loader,
                noise_multiplier=noise, max_grad_norm=cfg.max_grad_norm,
                poisson_sampling=cfg.poisson_sampling, grad_sample_mode=cfg.mode.value,
                noise_generator=noise_generator, wrap_model=False,
            )
    except (UnsupportedError, NotImplementedError) as e:
        raise UnsupportedConfiguration(f"Opacus cannot train this model privately: {e}") from e
    if cfg.mode is ClipMode.GHOST:
        hooks, dp_optimizer, criterion, dp_loader = wrapped
    else:
        (hooks, dp_optimizer, dp_loader), criterion = wrapped, SequenceLoss()
    _empty_first_batch_as_empty(dp_loader)
    return PrivateRun(
        engine, hooks, model, dp_optimizer, dp_loader, criterion, cfg, ledger, steps, noise
    )


def _empty_first_batch_as_empty(loader: Any) -> None:
    """Make an empty *first* Poisson batch the empty list (a noise-only step), not Opacus's guess.

    Before any batch was seen, Opacus builds an empty batch from ``dataset[0]`` iterated as a
    sequence; for records that are dicts that means the dict's keys, and ``torch.zeros(dtype=str)``
    crashes the round. Without those guesses it returns ``[]``, which the trainer treats as an empty
    batch; later empty batches copy the structure of the first real one.
    """
    collate = getattr(loader, "collate_fn", None)
    if collate is not None and hasattr(collate, "sample_empty_shapes"):
        collate.sample_empty_shapes = None
        collate.dtypes = None

