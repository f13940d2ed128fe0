"""Rotation-aligned averaging under secure aggregation: 3 rounds, training loss going down."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_rotalign_three_secure_rounds_lower_the_loss(federation) -> None:
    fed = federation(sites=3, rule="rotalign", rule_params={"lam": 1.0}, rounds=3, ranks=[4, 4, 8],
                     train={"local_steps": 6, "batch_size": 8, "lr": 1e-2})
    fed.start_agents()
    history = fed.wait_rounds()
    assert [h["version"] for h in history] == ["v0001", "v0002", "v0003"], history
    for v in ("v0001", "v0002", "v0003"):
        assert fed.running.store.manifest(fed.files.model, v)["secure_aggregation"]["protocol"] == "SecAgg"
    losses = [h["loss_before"] for h in history]
    assert losses[0] > losses[1] > losses[2], losses
    evals = [h["eval_loss"] for h in history]  # the received global model on each site's held-out data
    assert all(e is not None for e in evals) and evals[0] > evals[-1], evals
