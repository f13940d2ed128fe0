"""Round lifecycle facts an operator sees: waiting for sites known from state, 'finished', final and resume lines."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from fedquilt.coordinator.config import FederationConfig
from fedquilt.coordinator.orchestrator import Orchestrator
from fedquilt.strategies.registry import make_rule

FP = "f" * 64


class Clock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _orch(clock: Clock, **kwargs: Any) -> Orchestrator:
    fed = FederationConfig(name="fed", model="m", base_fingerprint=FP, min_sites=2, wait_for_sites=30.0, rounds=2,
                           train={"local_steps": 1}, seed=0)
    defaults: dict[str, Any] = dict(rule=make_rule("fedit", {}), fed=fed, secure=False, publisher=lambda *a: "never",
                                    glob=None, rounds_done=0, global_version=None, clock=clock)
    defaults.update(kwargs)
    return Orchestrator(**defaults)


def _hello(orch: Orchestrator, site: str) -> None:
    orch.hello(site, 10, 4, 16.0, FP, "causal-lm", {"m": (8, 8)})  # type: ignore[arg-type]


def test_round_waits_for_sites_enrolled_before_a_restart() -> None:
    clock = Clock(100.0)
    known = [{"site": f"site-{i}", "num_samples": 10, "rank": 4, "last_seen_seconds_ago": 5.0} for i in range(3)]
    orch = _orch(clock, known_sites=known)
    _hello(orch, "site-0")
    _hello(orch, "site-1")
    orch.tick()
    assert orch.status()["current_round"] is None  # site-2 is known from state: wait for it
    clock.t = 105.0  # within offline_after: site-0 and site-1 are still online
    _hello(orch, "site-2")
    orch.tick()
    assert orch.status()["current_round"]["cohort"] == ["site-0", "site-1", "site-2"]


def test_round_opens_without_a_missing_known_site_after_wait_for_sites() -> None:
    clock = Clock(100.0)
    known = [{"site": f"site-{i}", "num_samples": 10, "rank": 4, "last_seen_seconds_ago": 5.0} for i in range(3)]
    orch = _orch(clock, known_sites=known)
    for s in ("site-0", "site-1"):
        _hello(orch, s)
    orch.tick()
    clock.t = 131.0
    for s in ("site-0", "site-1"):  # still polling
        orch.sites[s].last_seen = clock.t  # type: ignore[index]
    orch.tick()
    assert orch.status()["current_round"]["cohort"] == ["site-0", "site-1"]


def test_finished_federation_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fedquilt.coordinator.rounds")
    orch = _orch(Clock(), rounds_done=2, global_version="v0002")
    assert any("resuming federation fed after v0002 (round 2 of 2 published)" in r.getMessage() for r in caplog.records)
    status = orch.status()
    assert status["state"] == "finished" and status["running"] is True
    for _ in range(3):
        orch.tick()
    final = [r for r in caplog.records if "federation fed finished: 2 of 2 rounds published, latest version v0002"
             in r.getMessage()]
    assert len(final) == 1


def test_paused_and_running_states() -> None:
    orch = _orch(Clock())
    assert orch.status()["state"] == "running"
    orch.set_running(False)
    assert orch.status()["state"] == "paused"


def test_one_site_is_not_plural(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    fed = FederationConfig(name="fed", model="m", base_fingerprint=FP, min_sites=1, rounds=1, train={"local_steps": 1},
                           train_timeout=5.0)
    orch = Orchestrator(rule=make_rule("fedit", {}), fed=fed, secure=False, publisher=lambda *a: "never", glob=None,
                        rounds_done=0, global_version=None, clock=clock)
    caplog.set_level(logging.INFO, logger="fedquilt.coordinator.rounds")
    _hello(orch, "site-0")
    orch.tick()
    assert any("round 1 opened with 1 site (" in r.getMessage() for r in caplog.records)
    progress = orch.status()["current_round"]
    assert progress["progress"] == {"site-0": "training"} and progress["deadline_utc"]
    clock.t = 6.0
    orch.tick()
    assert orch.status()["history"][-1]["discarded"] == "only 0 sites finished training, need 1"


def test_refused_hello_names_the_site() -> None:
    orch = _orch(Clock())
    with pytest.raises(Exception, match="hospital-x: base model fingerprint"):
        orch.hello("hospital-x", 10, 4, 16.0, "0" * 64, "causal-lm", {"m": (8, 8)})  # type: ignore[arg-type]


def test_site_that_took_its_shutdown_is_offline_at_once() -> None:
    clock = Clock(10.0)
    orch = _orch(clock, rounds_done=2, global_version="v0002")
    _hello(orch, "site-0")
    _hello(orch, "site-1")
    orch.tick()  # finished: every site is told SHUTDOWN
    assert [s["online"] for s in orch.status()["sites"]] == [True, True]
    task = orch.wait("site-0", 0, timeout=1.0)  # type: ignore[arg-type]
    assert task.kind.value == "SHUTDOWN"
    assert [(s["site"], s["online"]) for s in orch.status()["sites"]] == [("site-0", False), ("site-1", True)]
