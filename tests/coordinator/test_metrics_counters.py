"""Metrics: counters, histograms and status gauges move exactly as the fed events say."""

from __future__ import annotations

import math
import random
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fedquilt.coordinator.metrics import ROUND_BUCKETS, Direction, Metrics


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition text, keyed by (name, sorted labels)."""
    text = m.exposition().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(m: Metrics, name: str, **labels: str) -> float:
    return samples(m)[(name, tuple(sorted(labels.items())))]


def test_round_events_match_a_hand_count() -> None:
    rng = random.Random(7)
    m = Metrics()
    opened = published = discarded = dropouts = 0
    seconds: list[float] = []
    for r in range(1, 41):
        m.round_event("round_opened", round=r, cohort=5)
        opened += 1
        if rng.random() < 0.3:
            m.round_event("round_discarded", round=r, reason="only 1 sites finished training, need 2")
            discarded += 1
            continue
        d, s = rng.randint(0, 3), round(rng.uniform(0.5, 4000.0), 2)
        m.round_event("round_published", round=r, version=f"v{r}", contributors=5 - d, dropouts=d, seconds=s,
                      loss_before=2.0, loss_after=1.5, eval_loss=1.6)
        published += 1
        dropouts += d
        seconds.append(s)
    m.round_event("something_new", round=99)  # ignored, never raises into the round driver

    assert value(m, "fedquilt_rounds_opened_total") == opened == 40
    assert value(m, "fedquilt_rounds_published_total") == published
    assert value(m, "fedquilt_rounds_discarded_total") == discarded > 0
    assert value(m, "fedquilt_dropouts_total") == dropouts > 0
    assert value(m, "fedquilt_round_seconds_count") == len(seconds)
    assert math.isclose(value(m, "fedquilt_round_seconds_sum"), sum(seconds))
    for bound in ROUND_BUCKETS:
        le = "+Inf" if math.isinf(bound) else str(bound)
        assert value(m, "fedquilt_round_seconds_bucket", le=le) == sum(1 for s in seconds if s <= bound)


def test_bytes_clipping_rpc_errors_and_stages() -> None:
    m = Metrics()
    m.record_bytes("received", 1000)
    m.record_bytes(Direction.RECEIVED, 24)
    m.record_bytes("sent", 7)
    m.record_clipped(3)
    m.record_clipped(0)
    m.record_rpc_error("Upload", grpc.StatusCode.INVALID_ARGUMENT)
    m.record_rpc_error("Upload", "INVALID_ARGUMENT")
    m.record_rpc_error("Hello", grpc.StatusCode.PERMISSION_DENIED)
    m.observe_stage("training", 2.0)
    m.observe_stage("training", 5.5)
    m.observe_stage("phase0", 0.25)

    assert value(m, "fedquilt_received_bytes_total") == 1024
    assert value(m, "fedquilt_sent_bytes_total") == 7
    assert value(m, "fedquilt_clipped_values_total") == 3
    assert value(m, "fedquilt_rpc_errors_total", method="Upload", code="INVALID_ARGUMENT") == 2
    assert value(m, "fedquilt_rpc_errors_total", method="Hello", code="PERMISSION_DENIED") == 1
    assert value(m, "fedquilt_stage_seconds_count", stage="training") == 2
    assert value(m, "fedquilt_stage_seconds_sum", stage="training") == 7.5
    assert value(m, "fedquilt_stage_seconds_bucket", stage="training", le="5.0") == 1
    assert value(m, "fedquilt_stage_seconds_sum", stage="phase0") == 0.25


@pytest.mark.parametrize("call, message", [
    (lambda m: m.record_bytes("sideways", 1), "direction must be 'received' or 'sent', got 'sideways'"),
    (lambda m: m.record_bytes("sent", -5), "n must be an int >= 0, got -5"),
    (lambda m: m.record_clipped(1.5), "n must be an int >= 0, got 1.5"),
    (lambda m: m.observe_stage("training", math.nan), "stage seconds must be finite and >= 0, got nan"),
    (lambda m: m.observe_stage("", 1.0), "stage must be a non-empty name"),
    (lambda m: m.record_rpc_error("", "INTERNAL"), "method and code must be non-empty"),
])
def test_bad_input_is_refused_by_name(call: Any, message: str) -> None:
    m = Metrics()
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        call(m)
    assert value(m, "fedquilt_sent_bytes_total") == 0


def test_status_gauges_follow_the_bound_status_at_every_scrape() -> None:
    status: dict[str, Any] = {
        "sites": [{"site": "a", "online": True}, {"site": "b", "online": False}, {"site": "c", "online": True}],
        "current_round": {"round": 4, "stage": "training"}, "rounds_done": 3, "rounds_planned": 10, "running": True,
    }
    m = Metrics()
    assert ("fedquilt_sites_online", ()) not in samples(m)  # unbound: no gauges, and no error
    m.bind(lambda: status)
    assert value(m, "fedquilt_sites_online") == 2
    assert value(m, "fedquilt_sites_enrolled") == 3
    assert value(m, "fedquilt_current_round") == 4
    assert value(m, "fedquilt_rounds_done") == 3
    assert value(m, "fedquilt_rounds_planned") == 10
    assert value(m, "fedquilt_running") == 1
    status.update(current_round=None, running=False, sites=[{"site": "a", "online": False}])
    assert value(m, "fedquilt_current_round") == 0
    assert value(m, "fedquilt_sites_online") == 0
    assert value(m, "fedquilt_running") == 0


def test_a_failing_status_still_yields_the_counters() -> None:
    m = Metrics()
    m.round_event("round_opened", round=1, cohort=2)

    def broken() -> dict[str, Any]:
        raise RuntimeError("lock poisoned")

    m.bind(broken)
    got = samples(m)
    assert got[("fedquilt_rounds_opened_total", ())] == 1
    assert ("fedquilt_current_round", ()) not in got


def test_two_coordinators_in_one_process_keep_separate_counts() -> None:
    a, b = Metrics(), Metrics()  # the global registry would raise "Duplicated timeseries" here
    a.round_event("round_opened", round=1, cohort=3)
    a.round_event("round_opened", round=2, cohort=3)
    b.round_event("round_opened", round=1, cohort=3)
    assert value(a, "fedquilt_rounds_opened_total") == 2
    assert value(b, "fedquilt_rounds_opened_total") == 1
