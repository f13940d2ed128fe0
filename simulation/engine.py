"""A whole federation in one process: the rule's halves, the agent's trainer, the secure sum in memory.

Theory of operation
-------------------
Each round does what a deployment does, in the same order and with the same objects:

1. **Open**: every site (or ``cohort_size`` of them, sampled with the seeded generator) is in the
   cohort; a fresh 16-byte nonce is the round's public randomness; the ``RoundContext`` carries the
   cohort's ranks and the federation's ``modules_to_save``.
2. **Train**: for each site in turn, the rule's client half plans from the global *as a site
   receives it* (encoded and decoded like a download), and the site's own ``LoraTrainer`` (seed
   1000·seed + i, its own round counter, exactly as an agent's) trains on the site's rows.
3. **Secure sum** per phase: the sites' vectors go through ``secure_agg`` in memory
   (``simulation.secure_sum``) or are summed in plaintext; after a phase that broadcasts, the
   broadcast is encoded and decoded as the wire does and the next phase's masks are bound to its hash.
4. **Aggregate**: the coordinator's rule (``federated_rule``: saved modules, server optimizer) turns
   the sums into the next global state; ``Evaluator`` scores the published form of it on held-out rows.

So a simulated round-1 aggregate equals a wire federation's on the same data and seeds up to the
fixed-point rounding of the secure sum (``tests/simulation/test_simulate_matches_wire.py``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..agent.data import TokenizedDataset
from ..agent.trainer import LoraTrainer
from ..contract import TrainHyper
from ..contract import decode_aggregate, encode_aggregate
from ..proto.codec import decode_tensors, encode_tensors
from ..strategies.base import Aggregate, Broadcast, LocalUpdate, RoundContext
from ..strategies.rule import Rule
from ..strategies.registry import federated_rule
from .config import SimConfig
from .evaluate import Evaluator
from .secure_sum import Identities, mask_context, plain_sum, secure_sum

log = logging.getLogger("fedquilt.simulation")


class SimulationError(ValueError):
    """A simulation that cannot run as configured."""


@dataclass
class Site:
    """One simulated site: its rows, rank, trainer and persistent rule state."""

    name: str
    data: TokenizedDataset
    rank: int
    trainer: LoraTrainer
    state: dict[str, Any] = field(default_factory=dict)


@dataclass
class RoundRecord:
    """What one simulated round produced."""

    round: int
    contributors: int
    seconds: float
    train_loss_before: float
    train_loss_after: float
    clipped: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return dataclasses.asdict(self)


@dataclass
class SimResult:
    """Every round's record and the final global state."""

    rounds: list[RoundRecord]
    glob: Aggregate | None
    final: dict[str, Any]


class Simulation:
    """Runs the configured federation over prepared sites."""

    def __init__(self, cfg: SimConfig, sites: list[Site], test: TokenizedDataset | None, evaluator: Evaluator | None,
                 echo: Callable[[str], None] | None = None) -> None:
        """Keep the configuration and the sites (see ``build_simulation``)."""
        if not sites:
            raise SimulationError("a simulation needs at least one site")
        self.cfg, self.sites, self.test, self.evaluator = cfg, sites, test, evaluator
        self.echo = echo or (lambda line: None)
        fed = cfg.federation
        self.hp = TrainHyper.model_validate(fed.train)
        server_rule = federated_rule(fed.rule, fed.rule_params, fed.server_optimizer)
        if not isinstance(server_rule, Rule):
            raise SimulationError(f"rule {fed.rule!r} needs individual updates; the simulation runs sums-only rules")
        self.server_rule: Rule = server_rule
        self.rng = np.random.default_rng(fed.seed)
        self.ids = Identities([s.name for s in sites]) if fed.secure else None
        self.shapes = sites[0].trainer.target_names()
        self.saved = cfg.model.saved()

    def run(self) -> SimResult:
        """All rounds; returns their records and the final global."""
        glob: Aggregate | None = None
        records: list[RoundRecord] = []
        for rnd in range(1, self.cfg.federation.rounds + 1):
            started = time.monotonic()
            glob, record = self.round(rnd, glob)
            record.seconds = round(time.monotonic() - started, 2)
            if self.evaluator is not None and self.test is not None:
                record.metrics = self.evaluator.score(glob, self.test)
            records.append(record)
            self.echo(_line(record))
        final = records[-1].metrics if records else {}
        return SimResult(records, glob, final)

    def round(self, rnd: int, glob: Aggregate | None) -> tuple[Aggregate, RoundRecord]:
        """One round: train every cohort site, run each phase's sum, aggregate."""
        cohort = self._cohort()
        nonce = self.rng.bytes(16)
        ctx = RoundContext(round=rnd, shapes=self.shapes, ranks={s.name: s.rank for s in cohort}, session=nonce,
                           params=self.cfg.federation.rule_params, saved=self.saved)
        received = decode_aggregate(encode_aggregate(glob))  # what a site downloads
        updates: dict[str, tuple[LocalUpdate, int]] = {}
        before, after = [], []
        for site in cohort:
            rule = _sums_only(federated_rule(self.cfg.federation.rule, self.cfg.federation.rule_params))
            plan = rule.start(received, ctx, site.name, self.cfg.model.alpha, state=site.state)
            try:
                result = site.trainer.train(plan, site.data, self.hp, progress=False)
            finally:
                # The sites share one resident base (``new_trainer``): take this site's round off it now, or the
                # next site would start from its LoRA layers, dense weights or merge hooks.
                site.trainer.release()
            updates[site.name] = (result.update, result.n_samples)
            before.append(result.loss_before)
            after.append(result.loss_after)
        out, clipped = self._phases(cohort, ctx, glob, updates)
        record = RoundRecord(round=rnd, contributors=len(cohort), seconds=0.0, clipped=clipped,
                             train_loss_before=float(np.mean(before)), train_loss_after=float(np.mean(after)),
                             info={k: v for k, v in out.info.items() if isinstance(v, (int, float, str, bool))})
        if out.adapter:
            record.info["published_rank"] = max(f.rank for f in out.adapter.values())
        return out, record

    def _phases(self, cohort: list[Site], ctx: RoundContext, glob: Aggregate | None,
                updates: dict[str, tuple[LocalUpdate, int]]) -> tuple[Aggregate, int]:
        fed = self.cfg.federation
        client: dict[str, Rule] = {s.name: _sums_only(federated_rule(fed.rule, fed.rule_params)) for s in cohort}
        states = {s.name: s.state for s in cohort}
        weight_scale = float(sum(n for _, n in updates.values()))
        sent: Broadcast | None = None  # as the server produced it
        received: Broadcast | None = None  # as the sites decode it
        sent_bytes: bytes | None = None
        clipped = 0
        for phase in range(self.server_rule.phases):
            def vectors_of(site: str, session: bytes) -> dict[str, np.ndarray]:
                bound = dataclasses.replace(ctx, session=session or ctx.session)
                update, n = updates[site]
                return client[site].vectors(phase, update, n, bound, received, state=states[site])

            names = [s.name for s in cohort]
            server_ctx = ctx
            if self.ids is not None:
                sums, c, session = secure_sum(self.ids, names, vectors_of, weight_scale, fed.clip, fed.min_frac_bits,
                                              mask_context(sent_bytes) if phase > 0 else b"")
                clipped += c
                # As the coordinator does: under SecAgg both halves take the rule's randomness from the session id.
                server_ctx = dataclasses.replace(ctx, session=session)
            else:
                sums = plain_sum(names, vectors_of)
            out = self.server_rule.combine(phase, sums, server_ctx, glob, broadcast=sent)
            if isinstance(out, Aggregate):
                return out, clipped
            sent, sent_bytes = out, encode_tensors(dict(out.tensors))
            received = Broadcast(tensors=decode_tensors(sent_bytes))
        raise SimulationError(f"rule {fed.rule!r} produced no aggregate after {self.server_rule.phases} phases")

    def _cohort(self) -> list[Site]:
        size = self.cfg.federation.cohort_size
        if not size or size >= len(self.sites):
            return list(self.sites)
        chosen = sorted(int(i) for i in self.rng.choice(len(self.sites), size=size, replace=False))
        return [self.sites[i] for i in chosen]


def _sums_only(rule: Any) -> Rule:
    if not isinstance(rule, Rule):
        raise SimulationError(f"rule {rule.name!r} needs individual updates; the simulation runs sums-only rules")
    return rule


def _line(r: RoundRecord) -> str:
    m = " ".join(f"{k} {v:.4f}" for k, v in r.metrics.items() if isinstance(v, float))
    return (f"round {r.round:>3}: {r.contributors} sites, local loss {r.train_loss_before:.4f} -> "
            f"{r.train_loss_after:.4f}, {m} ({r.seconds:.1f}s)")


_TEMPLATES: dict[tuple[Any, ...], LoraTrainer] = {}


def new_trainer(cfg: SimConfig, model_dir: Path, seed: int) -> LoraTrainer:
    """A site's trainer, built as ``fedquilt agent run`` builds it (``LoraTrainer`` with the site's seed).

    The loaded base is shared between the sites of a process: each site gets a shallow copy of one
    template trainer with its own seed and round counter, so ten sites cost one model in memory and one
    load. A trainer trains on that resident base in place (LoRA layers, dense working weights, merge
    hooks), so the engine releases every site's round right after it trained
    (``tests/simulation/test_shared_base.py``).
    """
    m = cfg.model
    key = (str(model_dir), m.task, tuple(m.target_modules), m.device, m.num_labels, m.head_seed)
    if key not in _TEMPLATES:
        _TEMPLATES[key] = LoraTrainer(model_dir, m.task, m.target_modules, device=m.device, seed=0,
                                      num_labels=m.num_labels, head_seed=m.head_seed)
    trainer = copy.copy(_TEMPLATES[key])
    if not (hasattr(trainer, "_seed") and hasattr(trainer, "_rounds")):  # a trainer without them: build one
        return LoraTrainer(model_dir, m.task, m.target_modules, device=m.device, seed=seed, num_labels=m.num_labels,
                           head_seed=m.head_seed)
    trainer._seed, trainer._rounds = seed, 0
    trainer.eval_data = None
    return trainer
