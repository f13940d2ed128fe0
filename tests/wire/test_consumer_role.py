"""A consumer certificate may list and pull published versions, and nothing else."""

from __future__ import annotations

from typing import Any, Callable

import grpc
import pytest

from fedquilt.agent.transport import channel
from fedquilt.cli.main import main
from fedquilt.proto import codec
from fedquilt.proto import federation_pb2 as pb
from fedquilt.proto import federation_pb2_grpc as pb_grpc

DENIED = grpc.StatusCode.PERMISSION_DENIED


def _consumer(w: Any) -> grpc.Channel:
    """A consumer certificate issued through the command line, and a channel presenting it."""
    out = w.files.root / "reader"
    assert main(["certs", "issue", "--dir", str(w.files.ca_dir), "--out", str(out), "--name", "reader",
                 "--role", "consumer"]) == 0
    ca = (w.files.ca_dir / "ca.pem").read_bytes()
    return channel(w.address, ca, (out / "reader.pem").read_bytes(), (out / "reader.key").read_bytes(), "localhost")


def test_a_consumer_can_list_and_pull_and_is_refused_every_other_rpc(coordinator) -> None:
    w = coordinator()
    w.publish_one_round()
    chan = _consumer(w)
    models, fed, admin = pb_grpc.ModelsStub(chan), pb_grpc.FederationStub(chan), pb_grpc.AdminStub(chan)
    versions = models.ListVersions(pb.ListVersionsRequest(model=w.files.model), timeout=5)
    assert [v.version for v in versions.versions] == ["v0001"]
    files = {c.path for c in models.Pull(pb.PullRequest(model=w.files.model, version="latest"), timeout=5)}
    assert "manifest.json" in files and "adapter_model.safetensors" in files
    header = pb.UploadHeader(round_id="r", step=1)
    others: dict[str, Callable[[], Any]] = {
        "Hello": lambda: fed.Hello(w.hello_request(), timeout=5),
        "WaitForTask": lambda: fed.WaitForTask(pb.WaitRequest(after_step=0, wait_seconds=0.1), timeout=5),
        "Download": lambda: fed.Download(pb.DownloadRequest(what=pb.DownloadRequest.GLOBAL), timeout=5),
        "Upload": lambda: fed.Upload(codec.upload_messages(header, b"x"), timeout=5),
        "Submit": lambda: fed.Submit(pb.SubmitRequest(round_id="r", step=1, kind=pb.TRAIN), timeout=5),
        "Status": lambda: admin.Status(pb.StatusRequest(), timeout=5),
        "ListSites": lambda: admin.ListSites(pb.ListSitesRequest(), timeout=5),
        "SetFederationState": lambda: admin.SetFederationState(pb.FederationStateRequest(running=False), timeout=5),
    }
    before = w.snapshot()
    assert {name: w.refused(call) for name, call in others.items()} == {name: DENIED for name in others}
    assert w.snapshot() == before
    chan.close()


def test_which_roles_may_pull_is_the_operators_setting(coordinator) -> None:
    w = coordinator(pull_roles=["admin"])
    w.publish_one_round()
    chan = _consumer(w)
    models = pb_grpc.ModelsStub(chan)
    assert w.refused(lambda: models.Pull(pb.PullRequest(model=w.files.model), timeout=5)) is DENIED
    assert w.refused(lambda: w.models("site-0").Pull(pb.PullRequest(model=w.files.model), timeout=5)) is DENIED
    assert {c.path for c in w.models("admin").Pull(pb.PullRequest(model=w.files.model), timeout=5)} >= {"manifest.json"}
    chan.close()
