"""The status travels typed (FederationStatus) and decodes back to the layout of /status.json, value for value."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from fedquilt.proto import federation_pb2 as pb
from fedquilt.proto.status_wire import iso_of, site_info, status_from_pb, status_to_pb, timestamp_of_iso

NOW = 1_796_000_000.25

STATUS: dict[str, Any] = {
    "federation": "demo", "model": "demo-adapter", "rule": "secure-stack", "secure_aggregation": True,
    "running": True, "state": "running", "rounds_done": 2, "rounds_planned": 5, "global_version": "v0002",
    "current_round": {
        "round": 3, "id": "r0003-0a1b2c3d", "stage": "phase", "phase": 1, "cohort": ["a", "b", "c"],
        "participants": ["a", "b"], "progress": {"a": "sent", "b": "waiting", "c": "dropped"},
        "deadline_utc": "2026-12-01T23:10:05+00:00", "secure_sum_step": "consistency"},
    "sites": [{"site": "a", "online": True, "num_samples": 120, "rank": 4, "last_seen_seconds_ago": 0.4},
              {"site": "z", "online": False, "num_samples": 7, "rank": 8, "last_seen_seconds_ago": 276.3}],
    "history": [
        {"round": 1, "version": "v0001", "contributors": 3, "dropouts": 0, "seconds": 12.5, "loss_before": 2.5,
         "loss_after": 2.1, "eval_loss": None, "round_id": "r0001-aaaaaaaa", "published_at": "2026-12-01T22:50:00+00:00",
         "epsilon": 1.25, "clipped": 0, "site_noise_sigmas": [0.8, 0.75]},
        {"round": 2, "version": None, "discarded": "coordinator stopped mid-round", "interrupted": True},
        {"round": 2, "version": "v0002", "contributors": 2, "dropouts": 1, "seconds": 30.0, "loss_before": None,
         "loss_after": None, "eval_loss": None, "round_id": None, "published_at": None, "epsilon": None},
        {"round": 3, "version": None, "discarded": "secure sum failed: too few", "clipped": 4},
    ],
}


def _wire(status: dict[str, Any]) -> pb.FederationStatus:
    return pb.FederationStatus.FromString(status_to_pb(status, NOW).SerializeToString())


def test_the_status_round_trips_to_the_same_dict() -> None:
    assert status_from_pb(_wire(STATUS)) == STATUS


@pytest.mark.parametrize("stage, step", [("training", None), ("phase", "declare_layout"), ("phase", "advertise"),
                                         ("phase", "unmask"), ("phase", None)])
def test_each_stage_and_secure_sum_step_round_trips(stage: str, step: str | None) -> None:
    status = copy.deepcopy(STATUS)
    status["current_round"].update(stage=stage, secure_sum_step=step)
    assert status_from_pb(_wire(status))["current_round"] == status["current_round"]


def test_no_round_in_flight_and_a_finished_federation() -> None:
    status = {**copy.deepcopy(STATUS), "current_round": None, "state": "finished", "global_version": None}
    assert status_from_pb(_wire(status)) == status


def test_the_message_is_typed_for_other_languages() -> None:
    msg = _wire(STATUS)
    assert msg.state == pb.FEDERATION_STATE_RUNNING and msg.current_round.stage == pb.ROUND_STAGE_PHASE
    assert msg.current_round.secure_sum_step == pb.SECAGG_CONSISTENCY
    assert msg.current_round.progress["c"] == pb.SITE_PROGRESS_DROPPED
    assert msg.generated_at.ToNanoseconds() == 1_796_000_000_250_000_000
    z = msg.sites[1]
    assert z.last_seen_at.ToNanoseconds() == pytest.approx((NOW - 276.3) * 1e9, abs=1e3)  # a time, not "276.3s ago"
    assert iso_of(msg.current_round.deadline) == "2026-12-01T23:10:05+00:00"
    published, discarded = msg.history[0], msg.history[1]
    assert published.HasField("epsilon") and not published.HasField("eval_loss") and published.clipped == 0
    assert iso_of(published.published_at) == "2026-12-01T22:50:00+00:00"
    assert discarded.version == "" and discarded.interrupted and not discarded.HasField("published_at")


def test_site_info_carries_a_timestamp() -> None:
    info = site_info({"site": "a", "online": True, "num_samples": 3, "rank": 2, "last_seen_seconds_ago": 10.0}, NOW)
    assert info.last_seen_at.ToNanoseconds() == 1_795_999_990_250_000_000 and info.lora_rank == 2


def test_timestamps_of_iso_text() -> None:
    ts = timestamp_of_iso("2026-12-01T22:50:00.5+01:00")
    assert ts is not None and iso_of(ts) == "2026-12-01T21:50:00+00:00"
    naive = timestamp_of_iso("2026-12-01T22:50:00")  # a naive time is UTC
    assert naive is not None and iso_of(naive) == "2026-12-01T22:50:00+00:00"
    assert timestamp_of_iso("") is None and timestamp_of_iso("yesterday") is None
