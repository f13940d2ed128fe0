"""Every number and metric a site sends is checked at the edge; nothing it sends can wedge the round driver."""

from __future__ import annotations

import math
import time
from typing import Any

import grpc
import pytest

from fedquilt.proto import federation_pb2 as pb
from fedquilt.proto import round_pb2 as rpb
from fedquilt.proto import tensors_pb2 as tpb
from fedquilt.strategies.base import Aggregate

INVALID = grpc.StatusCode.INVALID_ARGUMENT
OTHER_SHAPES = {"model.layers.0.self_attn.q_proj": tpb.Shape(dims=[16, 8]),
                "model.layers.0.self_attn.v_proj": tpb.Shape(dims=[16, 16])}


BAD_REPORTS = {
    "loss-nan": {"train": rpb.TrainReport(loss_before=math.nan)},
    "eval-loss-infinite": {"train": rpb.TrainReport(eval_loss=math.inf)},
    "negative-count": {"train": rpb.TrainReport(num_samples=-10)},
    "negative-steps": {"train": rpb.TrainReport(steps=-1)},
    "dp-delta-not-a-probability": {"train": rpb.TrainReport(dp=rpb.DpReport(delta=5.0, mode="hooks"))},
    "dp-epsilon-infinite": {"train": rpb.TrainReport(dp=rpb.DpReport(epsilon=math.inf, delta=1e-5))},
    "unmask-report-instead": {"unmask": rpb.UnmaskReport(clipped=1)},
}


@pytest.mark.parametrize("case", list(BAD_REPORTS))
def test_a_malformed_train_report_is_refused_and_the_next_round_still_opens(coordinator, case: str) -> None:
    w = coordinator(federation={"rounds": 2})
    trained = w.open_round()
    before = w.snapshot()
    t0 = trained["site-0"]
    assert w.refused(lambda: w.fed("site-0").Submit(pb.SubmitRequest(
        round_id=t0.round_id, step=t0.step, kind=pb.TRAIN, **BAD_REPORTS[case]), timeout=5)) is INVALID
    assert w.snapshot() == before
    uploads = w.next_stage(trained, pb.UPLOAD_PLAIN)
    for who, task in uploads.items():
        w.upload(who, task)
    assert w.wait_history(1)[0]["version"] == "v0001"
    done = w.wait_for("site-0", pb.ROUND_DONE, uploads["site-0"].step)
    w.wait_for("site-0", pb.TRAIN, done.step)  # round 2 opens: the driver is not wedged


def test_a_failure_while_publishing_discards_that_round_once_and_the_next_round_opens(coordinator) -> None:
    w = coordinator(federation={"rounds": 2})
    orch = w.running.orchestrator
    real, calls = orch.publisher, []

    def flaky(round_number: int, agg: Aggregate, facts: dict[str, Any]) -> str:
        calls.append(round_number)
        if len(calls) == 1:
            raise OSError("disk full")
        return real(round_number, agg, facts)

    orch.publisher = flaky
    first = w.publish_one_round()
    assert first[0]["version"] is None and "disk full" in first[0]["discarded"], first
    time.sleep(0.3)  # many driver ticks: the failure is not retried in a loop
    assert calls == [1]
    second = w.publish_one_round()
    assert [h["version"] for h in second] == [None, "v0001"], second


@pytest.mark.parametrize("rank", [2**31 - 1, 17, 0])
def test_a_rank_over_min_d_k_or_the_operator_maximum_is_refused(coordinator, rank: int) -> None:
    w = coordinator()
    before = w.snapshot()
    assert w.refused(lambda: w.hello("site-0", lora_rank=rank)) is INVALID
    assert w.snapshot() == before


def test_the_operator_maximum_rank_is_enforced(coordinator) -> None:
    w = coordinator(federation={"max_rank": 1})
    assert w.refused(lambda: w.hello("site-0", lora_rank=2)) is INVALID
    assert w.hello("site-0", lora_rank=1).site_id == "site-0"


def test_after_a_restart_the_first_hello_cannot_lock_honest_sites_out(coordinator) -> None:
    w = coordinator(federation={"target_shapes": None, "rounds": 3})  # no operator targets: the first version's
    assert w.publish_one_round()[0]["version"] == "v0001"
    w.restart()
    before = w.snapshot()
    assert w.refused(lambda: w.hello("site-2", target_shapes=OTHER_SHAPES)) is grpc.StatusCode.FAILED_PRECONDITION
    assert w.snapshot() == before
    assert w.hello("site-0").site_id == "site-0"
    assert w.hello("site-1").site_id == "site-1"


def test_before_the_first_version_the_first_hello_does_not_fix_the_targets(coordinator) -> None:
    w = coordinator(federation={"target_shapes": None, "wait_for_sites": 0.5})
    w.hello("site-2", target_shapes=OTHER_SHAPES)  # first to say Hello, but alone with its shapes
    history = w.publish_one_round(("site-0", "site-1"))
    assert (history[0]["version"], history[0]["contributors"]) == ("v0001", 2)
    assert w.running.orchestrator.shapes == {k: tuple(v.dims) for k, v in w.hello_request().target_shapes.items()}
