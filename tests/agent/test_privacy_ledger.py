"""DPConfig validation, the persisted ledger, and the site-level noise helpers (no model)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from opacus.accountants import PRVAccountant, RDPAccountant
from pydantic import ValidationError

from fedquilt.agent.privacy import (
    Accountant,
    DPConfig,
    PrivacyError,
    PrivacyLedger,
    SequenceLoss,
    clip_and_noise_update,
    site_level_epsilon,
)

warnings.filterwarnings("ignore", message=".*Optimal order.*")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({}, "noise_multiplier"),
        ({"noise_multiplier": 1.0, "target_epsilon": 3.0, "planned_rounds": 2}, "target_epsilon"),
        ({"noise_multiplier": 1.0, "max_grad_norm": -1.0}, "max_grad_norm must be > 0, got -1.0"),
        ({"noise_multiplier": -0.5}, "noise_multiplier must be >= 0, got -0.5"),
        ({"target_epsilon": 3.0}, "planned_rounds is required"),
        ({"target_epsilon": 3.0, "planned_rounds": 0}, "planned_rounds must be >= 1, got 0"),
        ({"noise_multiplier": 1.0, "delta": 1.5}, "delta must be in (0, 1), got 1.5"),
        ({"noise_multiplier": 1.0, "max_epsilon": 0.0}, "max_epsilon must be > 0, got 0.0"),
        ({"noise_multiplier": 1.0, "mode": "fast"}, "mode"),
    ],
)
def test_config_errors_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        DPConfig(**kwargs)  # type: ignore[arg-type]
    assert field in str(err.value)


def test_config_budget_defaults_to_target_and_is_frozen() -> None:
    cfg = DPConfig(target_epsilon=3.0, planned_rounds=5)
    assert cfg.budget == 3.0 and cfg.mode == "hooks" and cfg.accountant == "rdp"
    assert DPConfig(target_epsilon=3.0, planned_rounds=5, max_epsilon=4.0).budget == 4.0
    assert DPConfig(noise_multiplier=1.0).budget is None
    with pytest.raises(ValidationError):
        cfg.delta = 1e-6  # type: ignore[misc]


def test_ledger_epsilon_equals_opacus_and_persists(tmp_path: Path) -> None:
    path = tmp_path / "site" / "ledger.json"
    ledger = PrivacyLedger(path)
    assert ledger.epsilon(1e-5) == 0.0 and ledger.rounds == 0
    ledger.record([(1.2, 0.01, 100)])
    ledger.record([(1.2, 0.01, 50), (0.9, 0.02, 10)])
    ref = RDPAccountant()
    for sigma, q, n in [(1.2, 0.01, 150), (0.9, 0.02, 10)]:
        for _ in range(n):
            ref.step(noise_multiplier=sigma, sample_rate=q)
    reloaded = PrivacyLedger(path)
    assert reloaded.rounds == 2 and reloaded.history == [(1.2, 0.01, 150), (0.9, 0.02, 10)]
    assert reloaded.epsilon(1e-5) == pytest.approx(ref.get_epsilon(1e-5), rel=1e-12)
    assert json.loads(path.read_text())["rounds"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["ledger.json"]  # no temp file left


def test_ledger_prv_accountant_matches_opacus(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "l.json", accountant=Accountant.PRV)
    ledger.record([(1.0, 0.01, 200)])
    ref = PRVAccountant()
    ref.history = [(1.0, 0.01, 200)]
    assert ledger.epsilon(1e-5) == pytest.approx(ref.get_epsilon(1e-5), rel=1e-9)


def test_would_exceed_and_projection(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "l.json")
    ledger.record([(1.0, 0.01, 100)])
    ref = RDPAccountant()
    ref.history = [(1.0, 0.01, 300)]
    after = ref.get_epsilon(1e-5)
    assert ledger.projected_epsilon(200, 0.01, 1.0, 1e-5) == pytest.approx(after, rel=1e-12)
    assert ledger.would_exceed(200, 0.01, 1.0, after + 0.01, 1e-5) is None
    assert ledger.would_exceed(200, 0.01, 1.0, after - 0.01, 1e-5) == pytest.approx(after)
    assert ledger.rounds == 1  # a projection records nothing


def test_corrupt_ledger_is_an_error_not_a_reset(tmp_path: Path) -> None:
    path = tmp_path / "l.json"
    path.write_text('{"rounds": 3, "hist')
    with pytest.raises(PrivacyError, match="unreadable"):
        PrivacyLedger(path)


def test_invalid_entry_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(PrivacyError, match="invalid accountant entry"):
        PrivacyLedger(tmp_path / "l.json").record([(1.0, 1.5, 3)])


def test_sequence_loss_is_mean_of_record_means() -> None:
    import torch

    logits = torch.randn(2, 4, 5)
    labels = torch.tensor([[0, 1, 2, 3], [0, -100, -100, 4]])
    per = SequenceLoss("none")(logits, labels)
    lp = torch.log_softmax(logits, -1)
    want0 = -(lp[0, 0, 1] + lp[0, 1, 2] + lp[0, 2, 3]) / 3
    want1 = -lp[1, 2, 4]
    torch.testing.assert_close(per, torch.stack([want0, want1]))
    torch.testing.assert_close(SequenceLoss()(logits, labels), (want0 + want1) / 2)


def test_site_clip_scales_whole_update_to_c() -> None:
    rng = np.random.default_rng(0)
    vec = {"a": np.array([3.0, 0.0], np.float32), "b": np.array([[4.0]], np.float32)}  # norm 5
    out, clipped = clip_and_noise_update(vec, clip=1.0, sigma=0.0, n_sites=10, rng=rng)
    assert clipped
    np.testing.assert_allclose(out["a"], [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(out["b"], [[0.8]], rtol=1e-6)
    assert out["a"].dtype == np.float32
    same, clipped = clip_and_noise_update(vec, clip=10.0, sigma=0.0, n_sites=10, rng=rng)
    assert not clipped and np.array_equal(same["a"], vec["a"])


def test_site_noise_shares_sum_to_sigma_c() -> None:
    rng, n_sites, sigma, clip = np.random.default_rng(1), 25, 0.8, 2.0
    zero = {"w": np.zeros(20_000)}
    shares = [clip_and_noise_update(zero, clip, sigma, n_sites, rng)[0]["w"] for _ in range(25)]
    total = np.sum(shares, axis=0)
    assert float(np.std(total)) == pytest.approx(sigma * clip, rel=0.02)
    assert abs(float(np.mean(total))) < 0.05


def test_site_level_epsilon_matches_rdp_analysis() -> None:
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = compute_rdp(q=0.2, noise_multiplier=1.5, steps=30, orders=orders)
    want, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=1e-5)
    assert site_level_epsilon(1.5, 30, 0.2, 1e-5) == pytest.approx(want, rel=1e-12)
    assert site_level_epsilon(0.0, 30, 0.2, 1e-5) == math.inf
    assert site_level_epsilon(1.5, 60, 0.2, 1e-5) > site_level_epsilon(1.5, 30, 0.2, 1e-5)
