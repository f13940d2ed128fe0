"""A site's differential privacy across rounds: its DP settings, its ledger, and what it reports.

Theory of operation. One ``PrivacySite`` lives as long as the agent process. It is built from the
agent TOML's ``[dp]`` table (validated by ``DPConfig``) and a ledger file under the agent's
``state_dir``, which it reloads on restart, so ε keeps growing across rounds and restarts. The DP
trainer asks it, each round, to ``check`` the planned round before any model is built (raising
``BudgetExhausted`` past the budget), to ``start`` a ``PrivateRun`` (``make_private`` against the
ledger) and to ``close`` it: the steps taken are recorded and a ``PrivacyReport`` comes back. The
agent loop puts ``report.as_dict()`` into the round's TRAIN metrics as ``"dp"``; the coordinator
copies it, per site, into the published manifest's ``privacy`` field.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from .privacy import DPConfig, PrivateRun, make_private, noise_for
from .privacy_ledger import BudgetExhausted, PrivacyError, PrivacyLedger

log = logging.getLogger("fedquilt.agent")


@dataclass(frozen=True)
class PrivacyReport:
    """(ε, δ) of a site after a round, with what it covers; travels in metrics and manifests."""

    epsilon: float
    """ε over every DP step of every round this site ever ran (inf: some step had no noise)."""
    delta: float
    noise_multiplier: float
    """σ of this round (calibrated when the site configures ``target_epsilon``)."""
    max_grad_norm: float
    steps: int
    """DP-SGD steps over every round recorded in the ledger (what ε covers)."""
    rounds: int
    """DP rounds recorded in the ledger, this one included."""
    mode: str
    """Per-sample clipping: ``hooks`` or ``ghost``."""
    round_steps: int
    """DP-SGD steps of this round."""
    sample_rate: float
    """Poisson sampling rate q = 1 / batches per epoch of this round."""
    accountant: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe dict; an infinite ε (no noise) becomes ``None`` (no finite guarantee)."""
        return {
            "epsilon": self.epsilon if math.isfinite(self.epsilon) else None,
            "delta": self.delta, "noise_multiplier": self.noise_multiplier,
            "max_grad_norm": self.max_grad_norm, "steps": self.steps, "rounds": self.rounds,
            "mode": self.mode, "round_steps": self.round_steps, "sample_rate": self.sample_rate,
            "accountant": self.accountant,
        }


class PrivacySite:
    """A site's ``DPConfig`` plus its persistent ``PrivacyLedger``."""

    def __init__(self, cfg: DPConfig, ledger: PrivacyLedger) -> None:
        """Use ``cfg`` against ``ledger`` (which must use the accountant ``cfg`` names)."""
        if ledger.accountant is not cfg.accountant:
            raise PrivacyError(
                f"ledger {ledger.path} uses the {ledger.accountant.value} accountant but the DP "
                f"configuration asks for {cfg.accountant.value}"
            )
        self.cfg, self.ledger = cfg, ledger

    @classmethod
    def from_config(cls, raw: Mapping[str, Any] | DPConfig, ledger_path: Path) -> PrivacySite:
        """Validate a ``[dp]`` table and load (or start) the ledger at ``ledger_path``."""
        if isinstance(raw, DPConfig):
            cfg = raw
        else:
            if "site_noise" in raw:
                raise ValueError(
                    "dp.site_noise: site-level noise is not applied by the agent loop (see "
                    "docs/privacy.md, 'Site-level noise'); remove the table"
                )
            cfg = DPConfig.model_validate(dict(raw))
        site = cls(cfg, PrivacyLedger(ledger_path, cfg.accountant))
        log.info("differential privacy on: ε=%.4g spent over %d rounds so far (δ=%g, budget %s; ledger %s)",
                 site.epsilon(), site.ledger.rounds, cfg.delta, cfg.budget, ledger_path)
        return site

    def epsilon(self) -> float:
        """ε spent so far over every recorded round."""
        return self.ledger.epsilon(self.cfg.delta, self.cfg.accountant)

    def check(self, steps: int, sample_rate: float) -> None:
        """Raise ``BudgetExhausted`` if a round of ``steps`` steps at ``sample_rate`` is over budget."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        budget = self.cfg.budget
        if budget is None:
            return
        noise = noise_for(self.cfg, sample_rate, steps)
        eps = self.ledger.would_exceed(steps, sample_rate, noise, budget, self.cfg.delta, self.cfg.accountant)
        if eps is not None:
            # Same wording as make_private's own (second) check.
            raise BudgetExhausted(
                f"site privacy budget spent: ε would reach {eps:.2f} after round "
                f"{self.ledger.rounds + 1} (budget {budget}, δ={self.cfg.delta}); refusing to train"
            )

    def start(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader[Any], steps: int
    ) -> PrivateRun:
        """``make_private`` for one round of at most ``steps`` steps (the model already on its device)."""
        return make_private(model, optimizer, loader, self.cfg, self.ledger, steps)

    def close(self, run: PrivateRun) -> PrivacyReport:
        """Finish ``run`` (record its steps, remove the hooks) and report (ε, δ) over all rounds."""
        eps, delta = run.finish()
        return PrivacyReport(
            epsilon=eps, delta=delta, noise_multiplier=float(run.noise_multiplier),
            max_grad_norm=self.cfg.max_grad_norm, steps=sum(n for _, _, n in self.ledger.history),
            rounds=self.ledger.rounds, mode=self.cfg.mode.value, round_steps=run.steps_taken,
            sample_rate=float(run.sample_rate), accountant=self.cfg.accountant.value,
        )

    def report_of(self, result: Any) -> dict[str, Any]:
        """The ``"dp"`` metrics of a training result; refuses a result trained without DP."""
        report = getattr(result, "privacy", None)
        if not isinstance(report, PrivacyReport):
            raise PrivacyError(
                "differential privacy is configured ([dp]) but the trainer returned no privacy "
                f"report (trainer result {type(result).__name__}); refusing to submit a non-private update"
            )
        return report.as_dict()
