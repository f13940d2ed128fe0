"""Cohort metrics summed securely (only n-weighted means come out) and the site-level ε model of issue 11."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedquilt.agent.site_noise import site_level_epsilon_amplified
from fedquilt.strategies import cohort_metrics
from fedquilt.strategies.site_dp import effective_sigma, site_level_epsilon


def test_sum_of_packed_metrics_gives_weighted_means_and_total_clipped() -> None:
    sites = [({"loss_before": 2.0, "loss_after": 1.0, "eval_loss": 1.5, "steps": 4}, 30, 3),
             ({"loss_before": 4.0, "loss_after": 2.0, "eval_loss": None, "steps": 4}, 10, 0),
             ({"loss_before": 3.0, "loss_after": 1.5, "eval_loss": 2.5, "steps": 4}, 60, 12)]
    scale, clip = 100.0, 0.5
    packed = [cohort_metrics.pack(m, n, scale, clipped=c, clip=clip) for m, n, c in sites]
    assert {k for k in packed[0]} == {cohort_metrics.PREFIX + k for k in cohort_metrics.NAMES} | {cohort_metrics.CLIPPED}
    assert all(np.all(np.abs(v) <= clip) for p in packed for v in p.values())  # inside the declared range
    sums = {k: sum(p[k] for p in packed) for k in packed[0]}
    sums["__n__"] = np.array([1.0])
    rule, cohort = cohort_metrics.split(sums, clip)
    assert rule == {"__n__": sums["__n__"]}
    assert cohort["loss_before"] == pytest.approx((2 * 30 + 4 * 10 + 3 * 60) / 100, abs=1e-5)
    assert cohort["eval_loss"] == pytest.approx((1.5 * 30 + 2.5 * 60) / 90, abs=1e-5)  # weighted over the sites that report
    assert cohort["clipped"] == 15


def test_a_metric_nobody_reports_is_none() -> None:
    packed = cohort_metrics.pack({"eval_loss": 1.0}, 5, 10.0, names=("eval_loss", "loss_before"))
    _, cohort = cohort_metrics.split(packed)
    assert cohort["loss_before"] is None and cohort["eval_loss"] == 1.0


def test_site_level_epsilon_without_amplification_is_not_optimistic() -> None:
    # The old figure assumed cohort subsampling (rate 0.2) against a coordinator that knows the cohort.
    old = site_level_epsilon_amplified(1.5, 30, 0.2, 1e-5)
    new = site_level_epsilon([1.5] * 30, 1e-5)
    assert new == pytest.approx(site_level_epsilon_amplified(1.5, 30, 1.0, 1e-5), rel=1e-9)
    assert new > 3 * old
    assert site_level_epsilon([0.0], 1e-5) == math.inf and site_level_epsilon([], 1e-5) == 0.0


def test_dropouts_weaken_the_noise_and_the_accounting_says_so() -> None:
    assert effective_sigma(1.0, 10, 10) == 1.0
    assert effective_sigma(1.0, 5, 20) == pytest.approx(0.5)
    full = site_level_epsilon([effective_sigma(1.0, 10, 10)] * 3, 1e-5)
    dropped = site_level_epsilon([effective_sigma(1.0, 10, 10)] * 2 + [effective_sigma(1.0, 4, 10)], 1e-5)
    assert dropped > full
