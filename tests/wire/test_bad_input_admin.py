"""Operator RPCs refused to every non-admin identity, and request bytes that are not protobuf at all."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from fedquilt.proto import federation_pb2 as pb
from fedquilt.proto.status_wire import status_from_pb

ADMIN_CALLS = {
    "Status": lambda stub: stub.Status(pb.StatusRequest(), timeout=5),
    "ListSites": lambda stub: stub.ListSites(pb.ListSitesRequest(), timeout=5),
    "SetFederationState-pause": lambda stub: stub.SetFederationState(pb.FederationStateRequest(running=False), timeout=5),
    "SetFederationState-run": lambda stub: stub.SetFederationState(pb.FederationStateRequest(running=True), timeout=5),
}


@pytest.mark.parametrize("rpc", list(ADMIN_CALLS))
@pytest.mark.parametrize("who", ["site-0", "site-2", "coordinator"])
def test_operator_rpc_is_denied_to_non_admins_mid_round(coordinator, rpc: str, who: str) -> None:
    w: Any = coordinator()
    w.open_round()  # a round in flight: a pause by a non-admin would discard it
    before = w.snapshot()
    assert w.refused(lambda: ADMIN_CALLS[rpc](w.admin(who))) is grpc.StatusCode.PERMISSION_DENIED
    assert w.snapshot() == before and before["current_round"]["stage"] == "training"
    status = status_from_pb(w.admin().Status(pb.StatusRequest(), timeout=5).status)
    assert status["running"] is True and status["current_round"]["cohort"] == ["site-0", "site-1"]


def test_admin_pause_discards_the_round_in_flight_and_resume_reopens(coordinator) -> None:
    w: Any = coordinator()
    w.open_round()
    paused = status_from_pb(w.admin().SetFederationState(pb.FederationStateRequest(running=False), timeout=5).status)
    assert paused["running"] is False and paused["current_round"] is None
    assert paused["history"][-1]["discarded"] == "federation paused by the operator"
    done = w.wait_for("site-0", pb.ROUND_DONE, 0)
    assert done.message == "discarded: federation paused by the operator"
    w.admin().SetFederationState(pb.FederationStateRequest(running=True), timeout=5)
    again = w.wait_for("site-0", pb.TRAIN, done.step)
    assert again.round_id.startswith("r0001-") and again.round_id != done.round_id


UNARY = ["/fedquilt.v1.Federation/Hello", "/fedquilt.v1.Federation/WaitForTask", "/fedquilt.v1.Federation/Submit",
         "/fedquilt.v1.Models/ListVersions", "/fedquilt.v1.Admin/Status", "/fedquilt.v1.Admin/SetFederationState"]


def _raw(w: Any, who: str, method: str, body: bytes) -> bytes:
    call = w.channel(who).unary_unary(method, request_serializer=None, response_deserializer=None)
    return call(body, timeout=5)  # type: ignore[no-any-return]


@pytest.mark.parametrize("method", UNARY)
def test_request_bytes_that_are_not_protobuf_are_refused_and_the_server_goes_on(coordinator, method: str) -> None:
    w: Any = coordinator()
    w.hello("site-0")
    before = w.snapshot()
    who = "admin" if "/Admin/" in method else "site-0"
    code = w.refused(lambda: _raw(w, who, method, b"\xff\xff\xff\xff\xff\xff"))
    assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL)  # INTERNAL: grpc's own decoder
    assert w.snapshot() == before
    assert w.hello("site-0").site_id == "site-0"
