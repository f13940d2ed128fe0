"""The agent's [privacy] block: safe defaults, and DP rounds below its batch sizes refused before training."""

from __future__ import annotations

import pytest

from fedquilt.agent.config import AgentConfig, PrivacySection
from fedquilt.agent.site_machine import dp_refusal
from fedquilt.agent.trainer import TrainHyper


def test_defaults_are_safe() -> None:
    p = PrivacySection()
    assert p.min_secure_sum_sites == 3 and p.min_threshold_fraction == 0.5
    assert p.min_dp_batch_size == 8 and p.min_dp_eval_batches == 1
    with pytest.raises(ValueError):
        PrivacySection(min_secure_sum_sites=1)
    with pytest.raises(ValueError):
        PrivacySection(min_threshold_fraction=0.3)
    assert "privacy" in AgentConfig.model_fields


@pytest.mark.parametrize(("hp", "floor", "why"), [
    ({"local_steps": 2, "batch_size": 1}, {}, "batch_size 1 is below min_dp_batch_size 8"),
    ({"local_steps": 2, "batch_size": 8, "eval_batches": 1}, {"min_dp_eval_batches": 4},
     "eval_batches 1 is below min_dp_eval_batches 4"),
    ({"local_steps": 2, "batch_size": 8, "eval_batches": 1}, {}, ""),
    ({"local_steps": 2, "batch_size": 8}, {}, ""),
])
def test_dp_round_below_the_floor_is_refused(hp: dict[str, int], floor: dict[str, int], why: str) -> None:
    """A coordinator asking for batch_size 1 turns a loss into one record's loss; a site may ask for more eval."""
    assert dp_refusal(PrivacySection(**floor), TrainHyper.model_validate(hp)) == why
    # (A site without DP is never refused by this floor: tests/agent/test_site_machine.py drives the machine.)
