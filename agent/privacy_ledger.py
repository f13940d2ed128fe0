"""The site's privacy ledger: the accountant history of every DP round, persisted across restarts.

Theory of operation. A site's privacy loss is fully described by the Opacus accountant history
``[(noise_multiplier, sample_rate, steps), ...]`` of every DP-SGD round it ever ran. The ledger keeps
that list (consecutive equal (σ, q) entries merged, as Opacus does) in a small JSON file, rewritten
atomically after each round; ε is never stored but recomputed by a fresh Opacus accountant, so
(ε, δ) always covers every step of every round. An unreadable file is an error, never a fresh budget.
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
import warnings
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path

from opacus.accountants import create_accountant  # type: ignore[import-untyped]

HistoryEntry = tuple[float, float, int]
"""One accountant entry: (noise_multiplier, sample_rate, steps)."""


class PrivacyError(Exception):
    """Base class of the DP errors raised by the agent."""


class BudgetExhausted(PrivacyError):
    """Training would push the site's ε past its configured budget."""


class StepLimitExceeded(PrivacyError):
    """A run tried to take more DP steps than its budget check cleared."""


class UnsupportedConfiguration(PrivacyError):
    """The model or its placement cannot be trained privately as configured."""


class Accountant(StrEnum):
    """Privacy accountant used to turn the history into ε."""

    RDP = "rdp"
    PRV = "prv"


def accountant_epsilon(
    history: Sequence[HistoryEntry], delta: float, accountant: Accountant = Accountant.RDP
) -> float:
    """ε of a history, computed by a fresh Opacus accountant (inf if any step had no noise)."""
    return _epsilon(tuple((float(s), float(q), int(n)) for s, q, n in history), delta, accountant)


@functools.lru_cache(maxsize=256)
def _epsilon(history: tuple[HistoryEntry, ...], delta: float, accountant: Accountant) -> float:
    # Cached: the pre-round check and the post-round report usually ask about the same history.
    if not history:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in history):
        return math.inf
    acc = create_accountant(mechanism=accountant.value)
    acc.history = list(history)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order")
        return float(acc.get_epsilon(delta=delta))


def merge_history(history: Sequence[HistoryEntry], extra: Sequence[HistoryEntry]) -> list[HistoryEntry]:
    """History with ``extra`` appended; consecutive equal (σ, q) entries merged, as Opacus does."""
    out = list(history)
    for sigma, q, n in extra:
        if n <= 0:
            continue
        if out and out[-1][0] == sigma and out[-1][1] == q:
            out[-1] = (sigma, q, out[-1][2] + n)
        else:
            out.append((float(sigma), float(q), int(n)))
    return out


class PrivacyLedger:
    """The site's accountant history, persisted as JSON and reloaded on restart."""

    def __init__(self, path: Path, accountant: Accountant = Accountant.RDP) -> None:
        """Load the ledger at ``path`` (an absent file is an empty ledger; a bad one raises)."""
        self.path = Path(path)
        self.accountant = accountant
        self.history: list[HistoryEntry] = []
        self.rounds = 0
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        try:
            raw = json.loads(self.path.read_text())
            self.history = [(float(s), float(q), int(n)) for s, q, n in raw["history"]]
            self.rounds = int(raw["rounds"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            # Never fall back to an empty ledger: that would silently reset the budget.
            raise PrivacyError(f"privacy ledger {self.path} is unreadable: {e}") from e

    def epsilon(self, delta: float, accountant: Accountant | None = None) -> float:
        """ε spent so far over every recorded round (``accountant`` defaults to the ledger's)."""
        return accountant_epsilon(self.history, delta, accountant or self.accountant)

    def projected_epsilon(
        self, steps: int, sample_rate: float, noise_multiplier: float, delta: float,
        accountant: Accountant | None = None,
    ) -> float:
        """ε after a hypothetical further round of ``steps`` steps."""
        history = merge_history(self.history, [(noise_multiplier, sample_rate, steps)])
        return accountant_epsilon(history, delta, accountant or self.accountant)

    def would_exceed(
        self, steps: int, sample_rate: float, noise_multiplier: float, budget: float, delta: float,
        accountant: Accountant | None = None,
    ) -> float | None:
        """The ε a further round would reach if that is above ``budget``, else ``None``."""
        eps = self.projected_epsilon(steps, sample_rate, noise_multiplier, delta, accountant)
        return eps if eps > budget else None

    def record(self, entries: Sequence[HistoryEntry]) -> None:
        """Append one round's accountant entries and save atomically."""
        for sigma, q, n in entries:
            if not (sigma >= 0 and 0 < q <= 1 and n >= 0):
                raise PrivacyError(f"invalid accountant entry {(sigma, q, n)}")
        self.history = merge_history(self.history, entries)
        self.rounds += 1
        self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"format": 1, "rounds": self.rounds, "history": self.history})
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


