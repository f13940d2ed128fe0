"""The agent's [privacy] block: safe defaults, and DP rounds below its batch sizes refused before training."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fedquilt.agent.config import AgentConfig, PrivacySection
from fedquilt.agent.loop import AgentLoop
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
    loop = SimpleNamespace(privacy=object(), privacy_floor=PrivacySection(**floor))
    assert AgentLoop._dp_refusal(loop, TrainHyper.model_validate(hp)) == why  # type: ignore[arg-type]
    no_dp = SimpleNamespace(privacy=None, privacy_floor=PrivacySection(**floor))
    assert AgentLoop._dp_refusal(no_dp, TrainHyper.model_validate(hp)) == ""  # type: ignore[arg-type]
