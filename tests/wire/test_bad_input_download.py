"""Bad Download requests: precise statuses from a server-streaming RPC, state untouched."""

from __future__ import annotations

from typing import Any, Callable

import grpc
import pytest

from fedquilt import contract
from fedquilt.agent.transport import MAX_DOWNLOAD_BYTES
from fedquilt.proto import codec
from fedquilt.proto import federation_pb2 as pb

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
BROADCAST = pb.DownloadRequest.BROADCAST

CASES: dict[str, tuple[Callable[[pb.Task], pb.DownloadRequest], grpc.StatusCode]] = {
    "unspecified-what": (lambda t: pb.DownloadRequest(round_id=t.round_id), INVALID),
    "unknown-what": (lambda t: pb.DownloadRequest(what=7, round_id=t.round_id), INVALID),  # type: ignore[arg-type]
    "broadcast-for-phase-0": (lambda t: pb.DownloadRequest(what=BROADCAST, round_id=t.round_id, phase=0), PRECONDITION),
    "broadcast-for-missing-phase": (lambda t: pb.DownloadRequest(what=BROADCAST, round_id=t.round_id, phase=1),
                                    PRECONDITION),
    "broadcast-for-negative-phase": (lambda t: pb.DownloadRequest(what=BROADCAST, round_id=t.round_id, phase=-1),
                                     PRECONDITION),
    "broadcast-of-another-round": (lambda t: pb.DownloadRequest(what=BROADCAST, round_id="r0007-0badc0de", phase=1),
                                   PRECONDITION),
    "broadcast-without-round": (lambda t: pb.DownloadRequest(what=BROADCAST, phase=1), PRECONDITION),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_download_is_refused(coordinator, case: str) -> None:
    w: Any = coordinator()
    task = w.next_stage(w.open_round(), pb.UPLOAD_PLAIN)["site-0"]
    make, code = CASES[case]
    before = w.snapshot()
    assert w.refused(lambda: w.fed("site-0").Download(make(task), timeout=5)) is code
    assert w.snapshot() == before
    payload = codec.join_chunks(w.fed("site-0").Download(pb.DownloadRequest(what=pb.DownloadRequest.GLOBAL), timeout=5),
                                MAX_DOWNLOAD_BYTES)
    assert payload == b"" and contract.decode_aggregate(payload) is None  # no version yet: an empty global state


def test_broadcast_of_a_round_the_site_is_not_in_is_denied(coordinator) -> None:
    w: Any = coordinator()
    task = w.open_round()["site-0"]
    w.hello("site-2")
    request = pb.DownloadRequest(what=BROADCAST, round_id=task.round_id, phase=1)
    assert w.refused(lambda: w.fed("site-2").Download(request, timeout=5)) is grpc.StatusCode.PERMISSION_DENIED
