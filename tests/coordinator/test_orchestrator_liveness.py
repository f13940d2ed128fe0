"""Cohort sampling, over-selection and liveness of the round machine, on an injected clock (issue 15).

Sites are driven in memory through the orchestrator's site-facing API (the same calls the RPC
handlers make): a poll is ``wait(site, after, 0)``, training is ``trained``, plaintext upload is
``upload`` with fedit's real client-half vectors. A "killed" site simply stops calling.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch

from fedquilt.coordinator.config import FederationConfig
from fedquilt.coordinator.errors import NotInCohort
from fedquilt.coordinator.orchestrator import Orchestrator, RoundStage
from fedquilt.coordinator.steps import SiteId, Step
from fedquilt.proto.codec import encode_tensors
from fedquilt.strategies.base import LocalUpdate, RoundContext
from fedquilt.strategies.lora import LoraFactors
from fedquilt.strategies.registry import make_rule

SHAPES = {"m": (8, 8)}
FP = "f" * 64


class Clock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Sim:
    """An orchestrator plus in-memory sites that poll once per simulated second."""

    def __init__(self, sites: int, known: list[str] | None = None, **fed: Any) -> None:
        self.clock = Clock()
        self.published: list[dict[str, Any]] = []
        cfg = FederationConfig(base_fingerprint=FP, rule="fedit", rounds=20, seed=0, train_timeout=600.0,
                               stage_timeout=120.0, **fed)
        self.orch = Orchestrator(rule=make_rule("fedit", {}), fed=cfg, secure=False, publisher=self._publish,
                                 glob=None, rounds_done=0, global_version=None, clock=self.clock,
                                 known_sites=[{"site": s, "num_samples": 10, "rank": 2} for s in known or []])
        self.alive = {SiteId(f"site-{i}") for i in range(sites)}
        self.slow: set[SiteId] = set()
        self.after = {s: 0 for s in self.alive}
        for s in sorted(self.alive):
            self.orch.hello(s, 10, 2, 4.0, FP, "causal-lm", SHAPES)

    def _publish(self, number: int, agg: Any, facts: dict[str, Any]) -> str:
        self.published.append({"round": number, "at": self.clock.t, **facts})
        return f"v{number:04d}"

    def second(self) -> None:
        """One simulated second: every live site polls and does what it was asked; the driver ticks."""
        self.clock.t += 1.0
        for site in sorted(self.alive):
            task = self.orch.wait(site, self.after[site], 0.0)
            if task.kind is Step.IDLE:
                continue
            self.after[site] = task.step
            if task.kind is Step.TRAIN and site not in self.slow:
                self.orch.trained(site, task.round_id, task.step, {"loss_after": 1.0})
            elif task.kind is Step.UPLOAD_PLAIN:
                self.orch.upload(site, task.round_id, task.step, task.phase, "FLOAT32", [], self._vectors())
        self.orch.tick()

    @staticmethod
    def _vectors() -> bytes:
        gen = torch.Generator().manual_seed(0)
        adapter = {"m": LoraFactors(A=torch.randn(2, 8, generator=gen), B=torch.randn(8, 2, generator=gen), scaling=2.0)}
        ctx = RoundContext(round=1, shapes=SHAPES, ranks={"x": 2})
        return encode_tensors(make_rule("fedit", {}).vectors(0, LocalUpdate(adapter=adapter), 10, ctx, None))

    def run_until(self, cond: Any, limit: float) -> float:
        """Advance until ``cond()``; returns the clock then (fails past ``limit`` simulated seconds)."""
        start = self.clock.t
        while not cond():
            assert self.clock.t - start < limit, f"not reached within {limit}s: {self.orch.status()}"
            self.second()
        return self.clock.t


def test_a_site_that_stops_polling_is_offline_within_offline_after() -> None:
    sim = Sim(3, cohort_size=3, offline_after=10.0)
    sim.orch.set_running(False)  # no rounds: only liveness
    sim.run_until(lambda: sim.clock.t >= 5, 10)
    sim.alive.discard(SiteId("site-2"))
    killed = sim.clock.t
    online = lambda: {s["site"]: s["online"] for s in sim.orch.status()["sites"]}  # noqa: E731
    at = sim.run_until(lambda: not online()["site-2"], 60)
    assert at - killed <= 10.0
    assert online() == {"site-0": True, "site-1": True, "site-2": False}


def test_a_poll_whose_caller_has_gone_is_no_heartbeat() -> None:
    sim = Sim(2, offline_after=10.0)
    sim.orch.set_running(False)
    sim.clock.t = 30.0
    sim.orch.wait(SiteId("site-0"), 10**18, 0.2, alive=lambda: False)  # the RPC was cancelled: the site died
    sim.orch.wait(SiteId("site-1"), 10**18, 0.0)
    assert {s["site"]: s["online"] for s in sim.orch.status()["sites"]} == {"site-0": False, "site-1": True}


def test_a_killed_site_does_not_delay_the_next_round() -> None:
    sim = Sim(4, cohort_size=3, over_select=0.34, offline_after=10.0)
    sim.run_until(lambda: len(sim.published) == 1, 30)
    sim.alive.discard(SiteId("site-1"))  # killed right after round 1 published; still looks online for a while
    killed = sim.clock.t
    sim.run_until(lambda: len(sim.published) == 3, 60)
    rounds = [p["at"] for p in sim.published]
    print(f"killed at {killed}s; rounds published at {rounds}")
    assert rounds[2] - killed <= 20.0  # a few long-poll periods, not train_timeout (600 s)
    history = sim.orch.status()["history"]
    assert [h["version"] for h in history] == ["v0001", "v0002", "v0003"]
    assert all(p["contributors"] == 3 and p["dropouts"] == 0 for p in sim.published[1:])  # sampled while "online": released
    sim.run_until(lambda: sim.clock.t > killed + 10.0 and sim.orch.current is not None
                  and sim.orch.current.stage is RoundStage.TRAINING, 30)
    assert SiteId("site-1") not in sim.orch.current.cohort  # once offline it is not sampled at all


def test_without_over_selection_a_dead_site_is_not_sampled_once_offline() -> None:
    sim = Sim(4, cohort_size=3, offline_after=10.0)
    sim.run_until(lambda: len(sim.published) == 1, 30)
    sim.orch.set_running(False)
    sim.alive.discard(SiteId("site-1"))
    killed = sim.clock.t
    sim.run_until(lambda: sim.clock.t - killed > 10.0, 20)
    sim.orch.set_running(True)
    sim.run_until(lambda: len(sim.published) == 2, 30)
    assert sim.published[1]["contributors"] == 3 and sim.published[1]["dropouts"] == 0


def test_over_selected_slowest_sites_are_released_not_waited_for() -> None:
    sim = Sim(5, cohort_size=4, over_select=0.25)
    sim.slow = {SiteId("site-3")}  # trains forever
    sim.run_until(lambda: sim.orch.current is not None and sim.orch.current.stage is RoundStage.PHASE, 10)
    rnd = sim.orch.current
    assert rnd is not None and rnd.released == {SiteId("site-3")} and len(rnd.participants) == 4
    task = sim.orch.wait(SiteId("site-3"), 0, 0.0)
    assert task.kind is Step.ROUND_DONE and "released" in task.message
    with pytest.raises(NotInCohort):  # its late result is refused, precisely
        sim.orch.trained(SiteId("site-3"), rnd.spec.round_id, 1, {})
    sim.run_until(lambda: len(sim.published) == 1, 10)
    assert sim.published[0]["contributors"] == 4 and sim.published[0]["dropouts"] == 0
    assert sim.published[0]["at"] < 10.0


def test_a_round_waits_for_the_cohort_asked_for_then_names_who_is_missing(caplog: pytest.LogCaptureFixture) -> None:
    sim = Sim(3, cohort_size=3, min_sites=2, wait_for_sites=30.0, offline_after=10.0)
    sim.orch.set_running(False)
    sim.alive.discard(SiteId("site-2"))  # enrolled, then gone
    sim.run_until(lambda: sim.clock.t > 11.0, 20)
    sim.orch.set_running(True)
    with caplog.at_level(logging.WARNING, logger="fedquilt.coordinator.rounds"):
        opened = sim.run_until(lambda: sim.orch.current is not None, 60)
    assert opened >= 11.0 + 30.0  # it waited for the cohort the operator asked for ...
    assert sim.orch.current is not None and sim.orch.current.cohort == {"site-0", "site-1"}
    assert any("site-2" in r.getMessage() and "waited" in r.getMessage() for r in caplog.records)  # ... and says who


def test_after_a_restart_the_first_round_waits_for_sites_known_from_before() -> None:
    sim = Sim(2, known=["site-0", "site-1", "site-2"], wait_for_sites=30.0)
    sim.run_until(lambda: sim.clock.t >= 5, 10)
    assert sim.orch.current is None  # site-2 enrolled before the restart and has not come back yet
    sim.alive.add(SiteId("site-2"))
    sim.after[SiteId("site-2")] = 0
    sim.orch.hello(SiteId("site-2"), 10, 2, 4.0, FP, "causal-lm", SHAPES)
    sim.run_until(lambda: sim.orch.current is not None, 5)
    assert sim.orch.current is not None and len(sim.orch.current.cohort) == 3
