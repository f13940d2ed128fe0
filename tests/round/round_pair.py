"""RoundPair: the coordinator's real ``Orchestrator`` and N in-memory sites running the real rule halves.

No gRPC, no processes, no trainer: each site "trains" by drawing factors of the planned rank (keeping
whatever the rule froze), then answers its steps exactly as the agent's loop does, using the same
``contract.round_context`` and ``AgentLoop``-equivalent rule-state handling. Plaintext collection only
(the secure sum has its own oracle tests in tests/secure_agg and its wire tests in tests/e2e).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from fedquilt import contract
from fedquilt.agent.rule_state import RuleStateFile
from fedquilt.contract import round_context
from fedquilt.coordinator.config import FederationConfig
from fedquilt.coordinator.orchestrator import Orchestrator
from fedquilt.coordinator.steps import SiteId, Step
from fedquilt.proto import codec
from fedquilt.proto.round_spec import decode_spec, encode_spec
from fedquilt.strategies.base import Aggregate, Broadcast, LocalUpdate
from fedquilt.strategies.rule import IndividualRule
from fedquilt.strategies.lora import Adapter, LoraFactors
from fedquilt.strategies.registry import make_rule

SHAPES = {"layers.0.q_proj": (12, 10), "layers.0.v_proj": (8, 10)}
ALPHA = 8.0
FINGERPRINT = "f" * 64


def draw_factors(plan: Any, gen: torch.Generator) -> Adapter:
    """A site's "trained" factors: the plan's rank drawn from ``gen``, whatever the rule froze kept as given."""
    trained: Adapter = {}
    for m, (d, k) in SHAPES.items():
        init = plan.init[m] if plan.init is not None else None
        a = init.A if init is not None and not plan.train_a else torch.randn(plan.rank, k, generator=gen) * 0.3
        b = init.B if init is not None and not plan.train_b else torch.randn(d, plan.rank, generator=gen) * 0.3
        trained[m] = LoraFactors(A=a.to(torch.float32), B=b.to(torch.float32), scaling=plan.scaling)
    return trained


class Clock:
    """An injected clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclasses.dataclass
class Site:
    """One in-memory site: its rank, sample count, rule state on disk and what it trained."""

    name: str
    rank: int
    n: int
    state_dir: Path
    seed: int
    after_step: int = 0
    state: dict[str, Any] = dataclasses.field(default_factory=dict)
    trained: dict[int, Adapter] = dataclasses.field(default_factory=dict)
    """Round number -> the factors this site trained (the test's oracle input)."""
    dense: dict[int, dict[str, torch.Tensor]] = dataclasses.field(default_factory=dict)
    """Round number -> the dense deltas this site trained (``dense`` rule)."""

    def __post_init__(self) -> None:
        self.file = RuleStateFile(self.state_dir / "rule_state.pt")
        self.state = self.file.load()

    def restart(self) -> None:
        """Forget everything in memory; reload the rule state from disk as a restarted agent does."""
        self.state = self.file.load()


class RoundPair:
    """Drives one orchestrator and its sites through whole rounds in memory."""

    def __init__(self, rule: str, ranks: Mapping[str, int], tmp: Path, *, params: Mapping[str, Any] | None = None,
                 rounds: int = 3, counts: Mapping[str, int] | None = None) -> None:
        self.clock = Clock()
        self.rule_name, self.params = rule, dict(params or {})
        self.published: list[tuple[int, Aggregate, dict[str, Any]]] = []
        fed = FederationConfig(base_fingerprint=FINGERPRINT, rule=rule, rule_params=self.params, rounds=rounds,
                               min_sites=len(ranks), min_contributors=2, train_timeout=30, stage_timeout=30,
                               wait_for_sites=5, seed=7)
        self.orch = Orchestrator(rule=make_rule(rule, self.params), fed=fed, secure=False, publisher=self._publish,
                                 glob=None, rounds_done=0, global_version=None, clock=self.clock)
        self.sites = {s: Site(s, r, (counts or {}).get(s, 10 + 5 * i), tmp / s, seed=100 + i)
                      for i, (s, r) in enumerate(sorted(ranks.items()))}
        for site in self.sites.values():
            site.state_dir.mkdir(parents=True, exist_ok=True)
            self.orch.hello(SiteId(site.name), site.n, site.rank, ALPHA, FINGERPRINT, "causal-lm", SHAPES)

    def _publish(self, round_number: int, agg: Aggregate, facts: dict[str, Any]) -> str:
        self.published.append((round_number, agg, facts))
        return f"v{round_number:04d}"

    # ---- one round ------------------------------------------------------------------------------

    def run_round(self, *, skip_training: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        """Open a round, let every site but ``skip_training`` train and upload, and close it."""
        for site in self.sites.values():
            self._poll(site)  # every site is alive and long-polling between rounds (the heartbeat)
        self.orch.tick()
        rnd = self.orch.current
        assert rnd is not None, "the round did not open"
        for site in self.sites.values():
            task = self._poll(site)
            assert task.kind is Step.TRAIN
            if site.name not in skip_training:
                self._train(site, task)
        if skip_training:
            self.clock.now += 31  # the training deadline passes for the sites that never report
        self.orch.tick()
        for _ in range(4 * max(1, getattr(self.orch.rule, "phases", 1))):
            if self.orch.current is None:
                return
            for site in self.sites.values():
                if site.name in skip_training:
                    continue
                task = self._poll(site)
                if task.kind is Step.UPLOAD_PLAIN:
                    self._upload(site, task)
            self.orch.tick()
        raise AssertionError("the round did not finish")

    def _poll(self, site: Site) -> Any:
        task = self.orch.wait(SiteId(site.name), site.after_step, timeout=0)
        site.after_step = max(site.after_step, task.step)
        return task

    def _train(self, site: Site, task: Any) -> None:
        spec = decode_spec(encode_spec(task.spec))  # through the wire form, as a site gets it
        ctx = round_context(spec)
        rule = make_rule(spec.rule, spec.params)
        glob = contract.decode_aggregate(self.orch.global_payload(SiteId(site.name)))
        plan = rule.start(glob, ctx, site.name, ALPHA, state=site.state)
        gen = torch.Generator().manual_seed(site.seed * 1000 + spec.round)
        if plan.dense:
            dense = {m: torch.randn(d, k, generator=gen, dtype=torch.float64) * 0.1 for m, (d, k) in SHAPES.items()}
            site.dense[spec.round] = dense
            site.work = (spec, rule, ctx, LocalUpdate(dense={m: w.to(torch.float32) for m, w in dense.items()}))  # type: ignore[attr-defined]
            self.orch.trained(SiteId(site.name), task.round_id, task.step, {"n": site.n})
            return
        trained = draw_factors(plan, gen)
        site.trained[spec.round] = trained
        site.work = (spec, rule, ctx, LocalUpdate(adapter=trained))  # type: ignore[attr-defined]
        self.orch.trained(SiteId(site.name), task.round_id, task.step, {"n": site.n})

    def _upload(self, site: Site, task: Any) -> None:
        spec, rule, ctx, update = site.work  # type: ignore[attr-defined]
        if isinstance(rule, IndividualRule):
            vectors = rule.vectors(update, site.n, ctx)
        else:
            broadcast = None
            if task.phase > 0:
                broadcast = Broadcast(tensors=codec.decode_tensors(
                    self.orch.broadcast_payload(SiteId(site.name), task.round_id, task.phase)))
            vectors = rule.vectors(task.phase, update, site.n, ctx, broadcast, state=site.state)
            if task.phase == rule.phases - 1:
                site.file.save(site.state)
        arrays = {k: np.asarray(v, np.float32) for k, v in vectors.items()}
        self.orch.upload(SiteId(site.name), task.round_id, task.step, task.phase, "FLOAT32",
                         codec.layout_of(arrays), codec.encode_tensors(arrays))

    # ---- oracle ---------------------------------------------------------------------------------

    def expected_delta(self, round_number: int, contributors: set[str]) -> dict[str, torch.Tensor]:
        """Σ p_i s_i B_i A_i over ``contributors`` of that round (p_i from sample counts)."""
        total = sum(self.sites[s].n for s in contributors)
        if self.rule_name == "dense":
            return {m: sum(((self.sites[s].n / total) * self.sites[s].dense[round_number][m] for s in sorted(contributors)),
                           torch.zeros(SHAPES[m], dtype=torch.float64)) for m in SHAPES}
        return {m: sum(((self.sites[s].n / total) * self.sites[s].trained[round_number][m].delta()
                        for s in sorted(contributors)), torch.zeros(SHAPES[m], dtype=torch.float64))
                for m in SHAPES}
