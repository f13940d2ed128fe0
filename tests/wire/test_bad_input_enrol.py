"""Bad Hello / WaitForTask requests and calls before Hello: precise statuses, state untouched."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest

from fedquilt.proto import federation_pb2 as pb
from fedquilt.proto import round_pb2 as rpb
from fedquilt.proto import tensors_pb2 as tpb

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


def _shapes(**dims: list[int]) -> dict[str, tpb.Shape]:
    return {name: tpb.Shape(dims=d) for name, d in dims.items()}


BAD_HELLOS: list[tuple[str, dict[str, Any], grpc.StatusCode]] = [
    ("wrong-fingerprint", {"base_fingerprint": "0" * 64}, PRECONDITION),
    ("no-fingerprint", {"base_fingerprint": ""}, PRECONDITION),
    ("wrong-task", {"task": "seq-cls"}, PRECONDITION),
    ("unknown-task", {"task": "banana"}, PRECONDITION),
    ("zero-samples", {"num_samples": 0}, INVALID),
    ("negative-samples", {"num_samples": -7}, INVALID),
    ("zero-rank", {"lora_rank": 0}, INVALID),
    ("nan-alpha", {"lora_alpha": float("nan")}, INVALID),
    ("negative-alpha", {"lora_alpha": -1.0}, INVALID),
    ("no-targets", {"target_shapes": {}}, INVALID),
    ("1-d-target", {"target_shapes": _shapes(q=[16])}, INVALID),
    ("3-d-target", {"target_shapes": _shapes(q=[4, 4, 4])}, INVALID),
    ("scalar-target", {"target_shapes": _shapes(q=[])}, INVALID),
    ("zero-dim-target", {"target_shapes": _shapes(q=[0, 16])}, INVALID),
    ("negative-dim-target", {"target_shapes": _shapes(q=[-16, 16])}, INVALID),
]


@pytest.mark.parametrize("case, fields, code", BAD_HELLOS, ids=[c[0] for c in BAD_HELLOS])
@pytest.mark.parametrize("first", [True, False], ids=["first-site", "after-another"])
def test_bad_hello_is_refused_and_enrols_nobody(coordinator, case: str, fields: dict[str, Any],
                                                code: grpc.StatusCode, first: bool) -> None:
    w = coordinator()
    if not first:
        w.hello("site-0")
    before = w.snapshot()
    assert w.refused(lambda: w.hello("site-1", **fields)) is code
    assert w.snapshot() == before  # in particular the federation's target shapes are not set by a bad site
    assert w.hello("site-1").site_id == "site-1"
    assert [s["site"] for s in w.snapshot()["sites"]] == (["site-1"] if first else ["site-0", "site-1"])


MISMATCHED_SHAPES = {
    "other-dims": {"model.layers.0.self_attn.q_proj": [16, 8], "model.layers.0.self_attn.v_proj": [16, 16]},
    "missing-module": {"model.layers.0.self_attn.q_proj": [16, 16]},
    "extra-module": {"model.layers.0.self_attn.q_proj": [16, 16], "model.layers.0.self_attn.v_proj": [16, 16],
                     "model.layers.0.self_attn.k_proj": [16, 16]},
}


@pytest.mark.parametrize("case", ["other-dims", "missing-module", "extra-module"])
@pytest.mark.parametrize("who", ["site-1", "site-0"], ids=["new-site", "re-enrol"])
def test_hello_with_targets_that_differ_from_enrolled_sites_is_refused(coordinator, case: str, who: str) -> None:
    w = coordinator()
    w.hello("site-0")
    before = w.snapshot()
    shapes = {k: tpb.Shape(dims=v) for k, v in MISMATCHED_SHAPES[case].items()}
    assert w.refused(lambda: w.hello(who, target_shapes=shapes, num_samples=99)) is PRECONDITION
    assert w.snapshot() == before  # a refused re-enrolment keeps the old record (n=10), not n=99
    assert w.hello(who).site_id == who


def test_calls_before_hello_need_enrolment(coordinator) -> None:
    w = coordinator()
    trained = w.open_round()
    task = trained["site-0"]  # a real round id and step, but site-2 never said Hello
    before = w.snapshot()
    f2 = w.fed("site-2")
    calls = {
        "WaitForTask": lambda: f2.WaitForTask(pb.WaitRequest(after_step=0, wait_seconds=0.1), timeout=5),
        "Download GLOBAL": lambda: f2.Download(pb.DownloadRequest(what=pb.DownloadRequest.GLOBAL), timeout=5),
        "Download BROADCAST": lambda: f2.Download(pb.DownloadRequest(what=pb.DownloadRequest.BROADCAST,
                                                                     round_id=task.round_id, phase=1), timeout=5),
        "Upload": lambda: w.upload("site-2", task),
        "Submit TRAIN": lambda: f2.Submit(pb.SubmitRequest(round_id=task.round_id, step=task.step, kind=pb.TRAIN,
                                                           train=rpb.TrainReport()), timeout=5),
        "Submit DECLARE_LAYOUT": lambda: f2.Submit(pb.SubmitRequest(round_id=task.round_id, step=task.step,
                                                                    kind=pb.DECLARE_LAYOUT), timeout=5),
    }
    codes = {name: w.refused(call) for name, call in calls.items()}
    assert codes == dict.fromkeys(calls, PRECONDITION)
    assert w.snapshot() == before
    assert w.train_done("site-0", task).accepted  # the coordinator still serves the cohort


def test_site_enrolled_after_the_round_opened_is_not_in_its_cohort(coordinator) -> None:
    w = coordinator()
    trained = w.open_round()
    task = trained["site-0"]
    last = w.hello("site-2").last_step
    before = w.snapshot()
    f2 = w.fed("site-2")
    assert w.refused(lambda: f2.Submit(pb.SubmitRequest(round_id=task.round_id, step=task.step, kind=pb.TRAIN,
                                                        train=rpb.TrainReport()), timeout=5)) is grpc.StatusCode.PERMISSION_DENIED
    assert w.snapshot() == before
    assert f2.WaitForTask(pb.WaitRequest(after_step=last, wait_seconds=0.1), timeout=5).kind == pb.IDLE


@pytest.mark.parametrize("wait", [-5.0, float("nan"), float("-inf")])
def test_wait_for_task_with_negative_or_nan_wait_is_invalid(coordinator, wait: float) -> None:
    w = coordinator()
    w.hello("site-0")
    f0 = w.fed("site-0")
    assert w.refused(lambda: f0.WaitForTask(pb.WaitRequest(wait_seconds=wait), timeout=5)) is INVALID


@pytest.mark.parametrize("wait", [-5.0, float("nan"), float("inf"), 1e30])
def test_wait_for_task_never_holds_a_call_past_the_long_poll_cap(coordinator, wait: float) -> None:
    w = coordinator()  # long_poll_seconds = 1.0
    w.hello("site-0")
    f0 = w.fed("site-0")
    before = w.snapshot()
    started = time.monotonic()
    try:
        task = f0.WaitForTask(pb.WaitRequest(after_step=2**62, wait_seconds=wait), timeout=4)
        assert (task.kind, task.step) == (pb.IDLE, 2**62)
    except grpc.RpcError as exc:
        assert exc.code() is INVALID  # refusing a bad wait outright is fine too
    assert time.monotonic() - started < 3.0
    assert w.snapshot() == before
    assert f0.WaitForTask(pb.WaitRequest(after_step=0, wait_seconds=0.1), timeout=5).kind == pb.IDLE
