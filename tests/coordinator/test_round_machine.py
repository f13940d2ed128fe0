"""The round machine on its own: its transition table, actions recorded (not delivered), the mailbox's step numbers.

Built from the real parts (Mailbox, Cohort, Ledger, plain phases, fedit) on an injected clock; no RPC, no threads.
"""

from __future__ import annotations

from itertools import product
from typing import Any

import numpy as np
import pytest

from fedquilt.coordinator.cohort import Cohort
from fedquilt.coordinator.collect import plain_phase
from fedquilt.coordinator.config import FederationConfig
from fedquilt.coordinator.ledger import Ledger
from fedquilt.coordinator.mailbox import Mailbox, SiteRecord
from fedquilt.coordinator.round_machine import _TRANSITIONS, RoundMachine
from fedquilt.coordinator.round_record import Events, RoundStage
from fedquilt.coordinator.steps import SiteId, Step
from fedquilt.proto.codec import encode_tensors
from fedquilt.strategies.base import N_KEY
from fedquilt.strategies.registry import make_rule

FP = "f" * 64
SHAPES = {"m": (4, 6)}


def _machine(sites: int = 3, **fed: Any) -> tuple[RoundMachine, Mailbox, list[tuple[int, Any, dict[str, Any]]]]:
    cfg = FederationConfig(base_fingerprint=FP, rule="fedit", rounds=2, seed=0, min_sites=sites, train_timeout=60.0,
                           stage_timeout=30.0, wait_for_sites=5.0, **fed)
    published: list[tuple[int, Any, dict[str, Any]]] = []

    def publisher(number: int, agg: Any, facts: dict[str, Any]) -> str:
        published.append((number, agg, facts))
        return f"v{number:04d}"

    mailbox = Mailbox(lambda: 0.0, online_window=10.0)
    for i in range(sites):
        mailbox.enrol(SiteRecord(SiteId(f"site-{i}"), 10 * (i + 1), 2, 4.0, last_seen=0.0, shapes=dict(SHAPES)))
    events = Events(None)
    ledger = Ledger(fed=cfg, secure=False, publisher=publisher, events=events, glob=None, global_version=None,
                    rounds_done=0, history=(), site_noise=None, phases=1)
    machine = RoundMachine(rule=make_rule("fedit", {}), fed=cfg, secure=False, roster=mailbox,
                           cohort=Cohort(cfg, None, [], cfg.seed), ledger=ledger, phases=plain_phase, events=events,
                           site_noise=None, running=True)
    return machine, mailbox, published


def _vectors(site: int, n: int) -> bytes:
    rng = np.random.default_rng(site)
    return encode_tensors({"m/A": rng.normal(size=(2, 6)).astype(np.float32) * n,
                           "m/B": rng.normal(size=(4, 2)).astype(np.float32) * n,
                           N_KEY: np.array([n], np.float32)})


@pytest.mark.parametrize("start,to", list(product(RoundStage, RoundStage)))
def test_every_pair_of_stages_is_allowed_exactly_when_the_table_says(start: RoundStage, to: RoundStage) -> None:
    machine, _, _ = _machine()
    machine.tick(1.0)
    rnd = machine.current
    assert rnd is not None and rnd.stage is RoundStage.TRAINING
    rnd.stage = start
    if to in _TRANSITIONS[start]:
        machine._advance(rnd, to)
        assert rnd.stage is to
    else:
        with pytest.raises(RuntimeError, match=f"no transition from {start.value} to {to.value}"):
            machine._advance(rnd, to)
        assert rnd.stage is start


def test_actions_are_recorded_and_only_the_mailbox_delivers_them_with_growing_steps() -> None:
    machine, mailbox, published = _machine()
    machine.tick(1.0)
    opened = machine.take_actions()
    assert sorted((a.site, a.kind) for a in opened) == [(SiteId(f"site-{i}"), Step.TRAIN) for i in range(3)]
    assert all(a.spec is not None and a.round_id == a.spec.round_id for a in opened)
    assert all(r.assignment.kind is Step.IDLE for r in mailbox.sites.values())  # nothing delivered yet
    assert machine.take_actions() == []  # taken once
    before = mailbox.step_counter
    mailbox.deliver(opened)
    steps = sorted(r.assignment.step for r in mailbox.sites.values())
    assert steps == [before + 1, before + 2, before + 3]
    rnd = machine.current
    assert rnd is not None
    for i, site in enumerate(sorted(rnd.cohort)):
        machine.trained(rnd, site, {"loss_after": float(i)})
    machine.tick(2.0)  # everyone trained: phase 0 opens
    uploads = machine.take_actions()
    assert {a.kind for a in uploads} == {Step.UPLOAD_PLAIN} and rnd.stage is RoundStage.PHASE
    mailbox.deliver(uploads)
    for i, site in enumerate(sorted(rnd.cohort)):
        phase, kind = machine.upload_phase(rnd, site, 0, "FLOAT32")
        assert kind is Step.UPLOAD_PLAIN
        mailbox.expect(site, mailbox.sites[site].assignment.step, kind)
        assert phase.upload(site, "FLOAT32", [], _vectors(i, mailbox.sites[site].num_samples))
    machine.tick(3.0)
    done = machine.take_actions()
    assert {a.kind for a in done} == {Step.ROUND_DONE} and machine.current is None
    assert [p[0] for p in published] == [1] and published[0][2]["contributors"] == 3
    assert machine.ledger.history[-1]["version"] == "v0001" and machine.ledger.history[-1]["loss_after"] == 1.0


def test_a_round_that_loses_its_sites_in_training_is_discarded_at_the_deadline() -> None:
    machine, mailbox, published = _machine(sites=2, min_contributors=2)
    machine.tick(1.0)
    mailbox.deliver(machine.take_actions())
    rnd = machine.current
    assert rnd is not None
    machine.trained(rnd, SiteId("site-0"), {})
    machine.tick(30.0)
    assert machine.current is rnd and machine.take_actions() == []  # still waiting: the deadline is at 61
    machine.tick(61.5)
    closed = machine.take_actions()
    assert machine.current is None and rnd.stage is RoundStage.DONE and published == []
    assert {(a.site, a.kind) for a in closed} == {(SiteId("site-0"), Step.ROUND_DONE), (SiteId("site-1"), Step.ROUND_DONE)}
    assert machine.ledger.history[-1]["discarded"] == "only 1 site finished training, need 2"
