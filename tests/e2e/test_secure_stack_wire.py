"""Secure stacking through the full gRPC path (issue: secure stacking).

* It equals plaintext ``stack`` on the same trained factors (each agent keeps an audit copy of
  its trained LoRA factors) within relative Frobenius error 1e-4, with mixed ranks.
* A site dropping between the two secure sums of the two-pass variant (``passes = 2``) discards the
  round: nothing from the first sum is published.
* With the default single-pass sketch, a site killed after its masked input (where the two-pass rule
  would have to discard) does not sink the round: it publishes, with that site's input (issue 15).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from fedquilt.cli.federation_files import point_agents_at
from fedquilt.strategies.adapters import load_peft
from fedquilt.strategies.base import N_KEY, LocalUpdate, RoundContext
from fedquilt.strategies.lora import dense_of
from fedquilt.strategies.registry import make_rule

pytestmark = pytest.mark.slow


def _published_delta(fed, version: str, tmp: Path) -> dict[str, torch.Tensor]:
    store = fed.running.store
    manifest = store.manifest(fed.files.model, version)
    tmp.mkdir(parents=True)
    for name in manifest["files"]:
        (tmp / name).write_bytes(store.read(fed.files.model, version, name))
    return dense_of(load_peft(tmp))


def test_secure_stack_equals_plaintext_stack_on_the_same_factors(federation, tmp_path: Path) -> None:
    ranks = [4, 8, 6]
    fed = federation(sites=3, rule="secure-stack", rounds=1, ranks=ranks, keep_submissions=True, min_sites=3,
                     train={"local_steps": 3, "batch_size": 8, "lr": 1e-2})
    fed.start_agents()
    history = fed.wait_rounds()
    assert history[-1]["version"] == "v0001", history
    published = _published_delta(fed, "v0001", tmp_path / "published")
    manifest = fed.running.store.manifest(fed.files.model, "v0001")
    assert manifest["secure_aggregation"]["protocol"] == "SecAgg"

    # Plaintext FLoRA stacking of the very factors the sites trained, through the plaintext rule.
    spec_ranks, updates = {}, {}
    stack = make_rule("stack", {})
    ctx = None
    for i, cfg in enumerate(fed.files.agent_configs):
        site = f"site-{i}"
        folders = list((cfg.parent / "state" / "submissions").glob("*-update"))
        assert len(folders) == 1, (site, sorted(str(p.relative_to(cfg.parent)) for p in cfg.parent.rglob("*")))
        adapter = load_peft(folders[0])
        spec_ranks[site] = ranks[i]
        n = 96  # each demo site holds 96 training rows
        ctx = RoundContext(round=1, shapes={m: tuple(f.B.shape[:1]) + tuple(f.A.shape[1:]) for m, f in adapter.items()},
                           ranks=spec_ranks, session=b"\0" * 16, params={})
        updates[site] = (adapter, n)
    ctx = RoundContext(round=1, shapes=ctx.shapes, ranks=spec_ranks, session=b"\0" * 16, params={})
    individual = {s: stack.vectors(LocalUpdate(adapter=a), n, ctx) for s, (a, n) in updates.items()}
    reference = dense_of(stack.combine_individual(individual, ctx, None).adapter)

    assert set(published) == set(reference)
    num = sum(float(torch.linalg.norm(published[m] - reference[m]) ** 2) for m in reference)
    den = sum(float(torch.linalg.norm(reference[m]) ** 2) for m in reference)
    rel = (num / den) ** 0.5
    print(f"secure-stack vs plaintext stack: relative Frobenius error {rel:.2e}")
    assert rel < 1e-4


@contextlib.contextmanager
def agent_processes(fed, tmp_path: Path) -> Iterator[list[subprocess.Popen]]:
    """One ``fedquilt agent run`` process per site (so a test can SIGKILL one); all killed on exit."""
    point_agents_at(fed.files, fed.address)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-m", "fedquilt.cli.main", "agent", "run", "--no-progress", "--config",
                               str(cfg)], stdout=(tmp_path / f"a{i}.log").open("wb"), stderr=subprocess.STDOUT, env=env)
             for i, cfg in enumerate(fed.files.agent_configs)]
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait()


def test_site_dropping_between_the_two_sums_discards_the_round(federation, tmp_path: Path) -> None:
    fed = federation(sites=3, rule="secure-stack", rule_params={"passes": 2}, rounds=1, min_sites=3,
                     min_contributors=2, timeouts=(240.0, 6.0), train={"local_steps": 2, "batch_size": 8, "lr": 3e-3})
    orch = fed.running.orchestrator
    with agent_processes(fed, tmp_path) as procs:
        deadline = time.monotonic() + 300
        while not (orch.current is not None and orch.current.phase == 1):
            assert time.monotonic() < deadline, "the second secure sum never started"
            time.sleep(0.02)
        procs[2].kill()  # site-2 took part in the first sum and now vanishes
        while not orch.history:
            assert time.monotonic() < deadline, "round 1 never ended"
            time.sleep(0.05)
    first = orch.history[0]
    assert first["version"] is None and "discarded" in first, first
    assert "participants changed" in first["discarded"] or "need" in first["discarded"], first
    assert fed.running.store.versions(fed.files.model) == []  # nothing from the first sum was published


def test_single_pass_round_survives_a_site_killed_during_the_secure_sum(federation, tmp_path: Path) -> None:
    from fedquilt.coordinator.steps import Step

    # Four sites: each site's own floor (3 signatures on the survivor set before it reveals) must still be met
    # once one is gone; with three, the honest two would rightly refuse to unmask.
    fed = federation(sites=4, rule="secure-stack", rounds=1, min_sites=4, min_contributors=2,
                     timeouts=(240.0, 6.0), train={"local_steps": 2, "batch_size": 8, "lr": 3e-3})
    orch = fed.running.orchestrator
    with agent_processes(fed, tmp_path) as procs:
        deadline = time.monotonic() + 300
        def uploaded() -> bool:  # site-2's masked input is in the sum (the point where two passes could not go on)
            c = orch.current.collector if orch.current is not None else None
            stage = getattr(c, "stage", None)
            return stage is Step.SECAGG_UNMASK or (stage is Step.SECAGG_MASKED and "site-2" in c.heard)

        while not uploaded():
            assert time.monotonic() < deadline and not orch.history, "site-2's masked input never arrived"
            time.sleep(0.005)
        procs[2].kill()  # site-2 has uploaded its masked input and vanishes before unmasking
        assert not orch.history, "the round ended before the kill"
        while not orch.history:
            assert time.monotonic() < deadline, "round 1 never ended"
            time.sleep(0.05)
    first = orch.history[0]
    assert first["version"] == "v0001", first  # the two-pass rule discards this round ("participants changed")
    manifest = fed.running.store.manifest(fed.files.model, "v0001")
    assert manifest["contributors"] == 4, manifest  # its masked input counts; the others' shares unmask it
    assert manifest["secure_aggregation"]["sites"] == 4
