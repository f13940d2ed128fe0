"""A site's TRAIN report travels typed (TrainReport) and decodes to exactly the fields that were sent."""

from __future__ import annotations

import pytest

from fedquilt.proto import round_pb2 as rpb
from fedquilt.proto.codec import CodecError
from fedquilt.proto.reports import train_report_from_pb, train_report_to_pb

DP = {"epsilon": 2.5, "delta": 1e-5, "noise_multiplier": 1.1, "max_grad_norm": 1.0, "steps": 60, "rounds": 3,
      "mode": "ghost", "round_steps": 20, "sample_rate": 0.125, "accountant": "prv"}


def _wire(report: dict) -> rpb.TrainReport:
    return rpb.TrainReport.FromString(train_report_to_pb(report).SerializeToString())


def test_a_plaintext_report_round_trips() -> None:
    report = {"n": 288, "loss_before": 2.75, "loss_after": 2.25, "steps": 50, "eval_loss": 2.5}
    assert train_report_from_pb(_wire(report)) == report
    assert _wire(report).num_samples == 288


def test_none_values_are_not_sent_and_a_dp_report_keeps_its_none_epsilon() -> None:
    report = {"n": 10, "loss_before": None, "loss_after": 1.0, "dp": {**DP, "epsilon": None}}
    msg = _wire(report)
    assert not msg.HasField("loss_before") and not msg.dp.HasField("epsilon")
    assert train_report_from_pb(msg) == {"n": 10, "loss_after": 1.0, "dp": {**DP, "epsilon": None}}


def test_the_secure_aggregation_report_carries_the_dp_record_only() -> None:
    assert [f.name for f, _ in _wire({"dp": DP}).ListFields()] == ["dp"]
    assert train_report_from_pb(rpb.TrainReport()) == {}


@pytest.mark.parametrize("report, message", [({"loss": 1.0}, "'loss' has no field"),
                                             ({"dp": {**DP, "sigma": 1.0}}, "'sigma' has no field"),
                                             ({"n": "ten"}, "train report n")])
def test_a_key_the_wire_has_no_field_for_is_refused(report: dict, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        train_report_to_pb(report)


def test_every_privacy_report_field_has_a_wire_field() -> None:
    from fedquilt.agent.privacy_session import PrivacyReport

    report = PrivacyReport(epsilon=1.0, delta=1e-5, noise_multiplier=1.0, max_grad_norm=1.0, steps=1, rounds=1,
                           mode="hooks", round_steps=1, sample_rate=0.5, accountant="rdp")
    assert train_report_from_pb(_wire({"dp": report.as_dict()}))["dp"] == report.as_dict()
