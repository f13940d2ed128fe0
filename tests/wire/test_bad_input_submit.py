"""Bad Submit requests, plaintext and secure-aggregation stages: precise statuses, state untouched."""

from __future__ import annotations

import math
from typing import Any, Callable

import grpc
import pytest

from fedquilt import secagg_wire
from fedquilt import secure_agg as sa
from fedquilt.proto import codec
from fedquilt.proto import federation_pb2 as pb
from fedquilt.proto import round_pb2 as rpb
from fedquilt.proto import secagg_pb2 as spb
from fedquilt.proto import tensors_pb2 as tpb

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
DENIED = grpc.StatusCode.PERMISSION_DENIED


def _submit(w: Any, who: str, task: pb.Task, **fields: Any) -> pb.Ack:
    base: dict[str, Any] = dict(round_id=task.round_id, step=task.step, kind=task.kind)
    base.update(fields)
    return w.fed(who).Submit(pb.SubmitRequest(**base), timeout=5)


def _dp(**over: Any) -> rpb.DpReport:
    """An honest DP report, with ``over`` applied."""
    fields: dict[str, Any] = dict(epsilon=1.5, delta=1e-5, noise_multiplier=1.0, max_grad_norm=1.0, steps=20, rounds=1,
                                  mode="hooks", round_steps=20, sample_rate=0.1, accountant="rdp")
    fields.update(over)
    return rpb.DpReport(**fields)


EMPTY = rpb.TrainReport()
TRAIN_CASES: dict[str, tuple[dict[str, Any], grpc.StatusCode]] = {
    "unspecified-kind": ({"kind": pb.STEP_KIND_UNSPECIFIED, "train": EMPTY}, INVALID),
    "unknown-kind": ({"kind": 99, "train": EMPTY}, INVALID),
    "idle-kind": ({"kind": pb.IDLE, "train": EMPTY}, INVALID),
    "upload-kind": ({"kind": pb.UPLOAD_PLAIN, "train": EMPTY}, INVALID),
    "masked-kind": ({"kind": pb.SECAGG_MASKED, "train": EMPTY}, INVALID),
    "round-done-kind": ({"kind": pb.ROUND_DONE}, INVALID),
    "unmask-report-on-train": ({"unmask": rpb.UnmaskReport(clipped=3)}, INVALID),
    "loss-nan": ({"train": rpb.TrainReport(loss_before=math.nan)}, INVALID),
    "loss-infinite": ({"train": rpb.TrainReport(loss_after=math.inf)}, INVALID),
    "loss-absurd": ({"train": rpb.TrainReport(eval_loss=1e300)}, INVALID),
    "negative-sample-count": ({"train": rpb.TrainReport(num_samples=-1)}, INVALID),
    "sample-count-over-2^31": ({"train": rpb.TrainReport(num_samples=2**40)}, INVALID),
    "negative-steps": ({"train": rpb.TrainReport(steps=-5)}, INVALID),
    "dp-epsilon-nan": ({"train": rpb.TrainReport(dp=_dp(epsilon=math.nan))}, INVALID),
    "dp-epsilon-negative": ({"train": rpb.TrainReport(dp=_dp(epsilon=-1.0))}, INVALID),
    "dp-delta-over-1": ({"train": rpb.TrainReport(dp=_dp(delta=2.0))}, INVALID),
    "dp-sample-rate-infinite": ({"train": rpb.TrainReport(dp=_dp(sample_rate=math.inf))}, INVALID),
    "dp-mode-70k-characters": ({"train": rpb.TrainReport(dp=_dp(mode="x" * 70_000))}, INVALID),
    "stale-round": ({"round_id": "r0001-00000000", "train": EMPTY}, PRECONDITION),
    "superseded-step": ({"step_delta": -1, "train": EMPTY}, PRECONDITION),
    "future-step": ({"step_delta": 1, "train": EMPTY}, PRECONDITION),
    "secagg-message-in-plaintext-round": ({"kind": pb.DECLARE_LAYOUT, "payload": b"\x01"}, PRECONDITION),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_bad_submit_during_training_is_refused(coordinator, case: str) -> None:
    w: Any = coordinator()
    task = w.open_round()["site-0"]
    fields, code = dict(TRAIN_CASES[case][0]), TRAIN_CASES[case][1]
    step = task.step + fields.pop("step_delta", 0)
    before = w.snapshot()
    assert w.refused(lambda: _submit(w, "site-0", task, step=step, **fields)) is code
    assert w.snapshot() == before and before["trained"] == []
    assert w.train_done("site-0", task).accepted
    assert w.snapshot()["trained"] == ["site-0"]


def test_repeated_train_report_is_idempotent(coordinator) -> None:
    w: Any = coordinator()
    task = w.open_round()["site-0"]
    assert _submit(w, "site-0", task, train=rpb.TrainReport(loss_after=1.0)).accepted
    once = w.snapshot()
    assert _submit(w, "site-0", task, train=rpb.TrainReport(loss_after=9.0)).accepted
    assert w.snapshot() == once
    assert w.running.orchestrator.current.trained["site-0"] == {"loss_after": 1.0}


def test_a_dp_report_reaches_the_round_as_the_manifest_records_it(coordinator) -> None:
    w: Any = coordinator()
    task = w.open_round()["site-0"]
    assert _submit(w, "site-0", task, train=rpb.TrainReport(num_samples=10, loss_before=2.0, steps=20,
                                                             dp=_dp(epsilon=None))).accepted
    assert w.running.orchestrator.current.trained["site-0"] == {
        "n": 10, "loss_before": 2.0, "steps": 20,
        "dp": {"epsilon": None, "delta": 1e-5, "noise_multiplier": 1.0, "max_grad_norm": 1.0, "steps": 20, "rounds": 1,
               "mode": "hooks", "round_steps": 20, "sample_rate": 0.1, "accountant": "rdp"}}


# ---- secure aggregation --------------------------------------------------------------------------


@pytest.fixture
def declare_stage(coordinator) -> Any:
    """A SecAgg coordinator whose two cohort sites were both asked to DECLARE_LAYOUT (phase 0)."""
    w = coordinator(secagg=True)
    w.tasks = w.next_stage(w.open_round(), pb.DECLARE_LAYOUT)
    return w


def _layout(w: Any) -> bytes:
    return codec.encode_layout(codec.layout_of(w.tensors()))


def _advertise_stage(w: Any) -> dict[str, pb.Task]:
    for who, task in w.tasks.items():
        assert _submit(w, who, task, payload=_layout(w)).accepted
    return {who: w.wait_for(who, pb.SECAGG_ADVERTISE, task.step) for who, task in w.tasks.items()}


def _client(w: Any, who: str) -> sa.ClientSession:
    cert, key = w.cert(who)
    ca = (w.files.ca_dir / "ca.pem").read_bytes()
    # A two-site cohort: this test client plays a site whose own [privacy] floor allows 2.
    return sa.ClientSession(sa.SiteId(who), sa.load_signing_key(key.read_bytes()), cert.read_bytes(), ca,
                            policy=sa.ClientPolicy(min_sites=2))


def _advertisement(w: Any, who: str, task: pb.Task) -> Any:
    return _client(w, who).handle(secagg_wire.decode_secagg("Announce", task.payload))


DECLARE_CASES: dict[str, tuple[Callable[[Any], dict[str, Any]], grpc.StatusCode]] = {
    "garbage-bytes": (lambda w: {"payload": b"\xff\xff\xff\xff\xff"}, INVALID),
    "negative-dim": (lambda w: {"payload": spb.LayoutDeclaration(layout=[tpb.NamedShape(name="x", dims=[-2])])
                                .SerializeToString()}, INVALID),
    "unnamed-entry": (lambda w: {"payload": spb.LayoutDeclaration(layout=[tpb.NamedShape(dims=[2])])
                                 .SerializeToString()}, INVALID),
    "wrong-stage-kind": (lambda w: {"kind": pb.SECAGG_SHARE, "payload": _layout(w)}, PRECONDITION),
    "wrong-step": (lambda w: {"step_delta": -1, "payload": _layout(w)}, PRECONDITION),
    "stale-round": (lambda w: {"round_id": "r0009-00000000", "payload": _layout(w)}, PRECONDITION),
}


@pytest.mark.parametrize("case", list(DECLARE_CASES))
def test_bad_layout_declaration_is_refused(declare_stage: Any, case: str) -> None:
    w = declare_stage
    task = w.tasks["site-0"]
    make, code = DECLARE_CASES[case]
    fields = make(w)
    step = task.step + fields.pop("step_delta", 0)
    before = w.snapshot()
    assert w.refused(lambda: _submit(w, "site-0", task, step=step, **fields)) is code
    assert w.snapshot() == before and before["secagg"][1] == []
    assert _submit(w, "site-0", task, payload=_layout(w)).accepted
    assert w.snapshot()["secagg"][1] == ["site-0"]


def test_empty_layout_declaration_is_refused(declare_stage: Any) -> None:
    w = declare_stage
    assert w.refused(lambda: _submit(w, "site-0", w.tasks["site-0"], payload=b"")) is INVALID


def test_secagg_messages_from_a_site_outside_the_cohort_are_denied(declare_stage: Any) -> None:
    w = declare_stage
    w.hello("site-2")
    task = w.tasks["site-0"]  # the cohort's round id and step, sent by site-2
    before = w.snapshot()
    assert w.refused(lambda: _submit(w, "site-2", task, payload=_layout(w))) is DENIED
    ads = _advertise_stage(w)
    before = w.snapshot()
    real = _advertisement(w, "site-0", ads["site-0"])
    ad = secagg_wire.encode_secagg(sa.KeyAdvertisement(real.nonce, sa.SiteId("site-2"), real.c_pk, real.s_pk,
                                                 w.cert("site-2")[0].read_bytes(), real.signature))
    assert w.refused(lambda: _submit(w, "site-2", ads["site-0"], payload=ad)) is DENIED
    assert w.snapshot() == before


def _forged(w: Any, task: pb.Task, how: str) -> bytes:
    ad = _advertisement(w, "site-0", task)
    if how == "garbage-bytes":
        return b"\x0a\xff\xff\xff\xff\x0f"
    if how == "impersonates-site-1":
        return secagg_wire.encode_secagg(_advertisement(w, "site-1", task))
    if how == "other-session-nonce":
        return secagg_wire.encode_secagg(sa.KeyAdvertisement(b"\x00" * len(ad.nonce), ad.site, ad.c_pk, ad.s_pk,
                                                       ad.cert_pem, ad.signature))
    if how == "short-keys":
        return secagg_wire.encode_secagg(sa.KeyAdvertisement(ad.nonce, ad.site, ad.c_pk[:16], ad.s_pk, ad.cert_pem,
                                                       ad.signature))
    if how == "bad-signature":
        return secagg_wire.encode_secagg(sa.KeyAdvertisement(ad.nonce, ad.site, ad.c_pk, ad.s_pk, ad.cert_pem,
                                                       bytes(len(ad.signature))))
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["garbage-bytes", "impersonates-site-1", "other-session-nonce", "short-keys",
                                 "bad-signature"])
def test_bad_key_advertisement_is_refused(declare_stage: Any, how: str) -> None:
    w = declare_stage
    task = _advertise_stage(w)["site-0"]
    before = w.snapshot()
    assert before["secagg"][:2] == ["SECAGG_ADVERTISE", []]
    assert w.refused(lambda: _submit(w, "site-0", task, payload=_forged(w, task, how))) is INVALID
    assert w.snapshot() == before
    assert _submit(w, "site-0", task, payload=secagg_wire.encode_secagg(_advertisement(w, "site-0", task))).accepted
    assert w.snapshot()["secagg"][1] == ["site-0"]


def test_identical_retry_of_a_key_advertisement_is_accepted(declare_stage: Any) -> None:
    w = declare_stage
    task = _advertise_stage(w)["site-0"]
    payload = secagg_wire.encode_secagg(_advertisement(w, "site-0", task))
    assert _submit(w, "site-0", task, payload=payload).accepted
    assert _submit(w, "site-0", task, payload=payload).accepted


def test_a_bad_dp_report_is_one_log_line_naming_the_field(coordinator, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    w: Any = coordinator()
    task = w.open_round()["site-0"]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        with pytest.raises(grpc.RpcError) as err:
            _submit(w, "site-0", task, train=rpb.TrainReport(dp=_dp(delta=5.0)))
    assert err.value.code() is INVALID and "dp.delta" in err.value.details()
    lines = [r.getMessage() for r in caplog.records if r.name.startswith(("fedquilt.coordinator", "grpc"))]
    assert len(lines) == 1 and "refused Submit from site-0: INVALID_ARGUMENT" in lines[0] and "dp.delta" in lines[0], lines
