"""Revocation and roles over real mutual TLS: a revoked site is cut off at its next call, others go on."""

from __future__ import annotations


import grpc

from fedquilt.coordinator.pki import revoke
from fedquilt.proto import federation_pb2 as pb
from fedquilt.proto.status_wire import status_from_pb
from fedquilt.proto import round_pb2 as rpb

UNAUTH = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED


def test_revoked_site_is_refused_on_its_open_channel_while_another_keeps_working(coordinator) -> None:
    w = coordinator()
    trained = w.open_round()  # both sites enrolled, a round open, each holding a TRAIN task
    site0_task = trained["site-0"]
    assert w.train_done("site-1", trained["site-1"]).accepted
    before = w.snapshot()

    revoke(w.files.ca_dir, w.cert("site-0")[0])

    # The same channel (TLS session already up) is refused on the very next call, for every RPC.
    f0 = w.fed("site-0")
    assert w.refused(lambda: f0.WaitForTask(pb.WaitRequest(after_step=0, wait_seconds=0.1), timeout=5)) is UNAUTH
    assert w.refused(lambda: f0.Hello(w.hello_request(), timeout=5)) is UNAUTH
    assert w.refused(lambda: f0.Submit(pb.SubmitRequest(round_id=site0_task.round_id, step=site0_task.step,
                                                        kind=pb.TRAIN, train=rpb.TrainReport()), timeout=5)) is UNAUTH
    assert w.refused(lambda: f0.Download(pb.DownloadRequest(what=pb.DownloadRequest.GLOBAL), timeout=5)) is UNAUTH
    assert w.refused(lambda: w.upload("site-0", site0_task)) is UNAUTH
    m0 = w.models("site-0")
    assert w.refused(lambda: m0.ListVersions(pb.ListVersionsRequest(model=w.files.model), timeout=5)) is UNAUTH
    assert w.refused(lambda: m0.Pull(pb.PullRequest(model=w.files.model), timeout=5)) is UNAUTH
    # A fresh connection with the revoked certificate fares no better.
    w.reconnect("site-0")
    assert w.refused(lambda: w.fed("site-0").WaitForTask(pb.WaitRequest(wait_seconds=0.1), timeout=5)) is UNAUTH

    # Nothing the revoked site tried reached the round; the other site keeps working.
    assert w.snapshot() == before
    task = w.fed("site-1").WaitForTask(pb.WaitRequest(after_step=0, wait_seconds=0.1), timeout=5)
    assert (task.kind, task.round_id) == (pb.TRAIN, site0_task.round_id)
    assert w.hello("site-1").site_id == "site-1"
    assert w.models("site-1").ListVersions(pb.ListVersionsRequest(model=w.files.model), timeout=5).versions == []


def test_operator_rpcs_are_refused_to_site_certificates_and_served_to_the_admin(coordinator) -> None:
    w = coordinator()
    w.hello("site-0")
    before = w.snapshot()
    for who in ("site-0", "coordinator"):
        a = w.admin(who)
        assert w.refused(lambda: a.Status(pb.StatusRequest(), timeout=5)) is DENIED
        assert w.refused(lambda: a.ListSites(pb.ListSitesRequest(), timeout=5)) is DENIED
        assert w.refused(lambda: a.SetFederationState(pb.FederationStateRequest(running=False), timeout=5)) is DENIED
    assert w.snapshot() == before and w.running.orchestrator.running

    admin = w.admin()
    status = status_from_pb(admin.Status(pb.StatusRequest(), timeout=5).status)
    assert status["running"] is True and [s["site"] for s in status["sites"]] == ["site-0"]
    sites = admin.ListSites(pb.ListSitesRequest(), timeout=5).sites
    assert [(s.site_id, s.num_samples, s.lora_rank, s.online) for s in sites] == [("site-0", 10, 2, True)]
    paused = status_from_pb(admin.SetFederationState(pb.FederationStateRequest(running=False), timeout=5).status)
    assert paused["running"] is False and w.running.orchestrator.running is False


def test_agent_rpcs_are_refused_to_admin_and_coordinator_certificates(coordinator) -> None:
    w = coordinator()
    before = w.snapshot()
    for who in ("admin", "coordinator"):
        f = w.fed(who)
        assert w.refused(lambda: f.Hello(w.hello_request(), timeout=5)) is DENIED
        assert w.refused(lambda: f.WaitForTask(pb.WaitRequest(wait_seconds=0.1), timeout=5)) is DENIED
    assert w.snapshot() == before


def test_revoked_admin_certificate_loses_operator_rpcs(coordinator) -> None:
    w = coordinator()
    admin = w.admin()
    assert status_from_pb(admin.Status(pb.StatusRequest(), timeout=5).status)["running"] is True
    revoke(w.files.ca_dir, w.files.admin_cert)
    assert w.refused(lambda: admin.Status(pb.StatusRequest(), timeout=5)) is UNAUTH
    assert w.refused(lambda: admin.SetFederationState(pb.FederationStateRequest(running=False), timeout=5)) is UNAUTH
    assert w.running.orchestrator.running is True


def test_unreadable_revocation_list_fails_closed_until_repaired(coordinator) -> None:
    w = coordinator()
    w.hello("site-0")
    crl = w.files.ca_dir / "crl.pem"
    good = crl.read_bytes()
    crl.write_bytes(b"-----BEGIN X509 CRL-----\ngarbage\n-----END X509 CRL-----\n")
    f0 = w.fed("site-0")
    assert w.refused(lambda: f0.WaitForTask(pb.WaitRequest(wait_seconds=0.1), timeout=5)) is grpc.StatusCode.UNAVAILABLE
    crl.write_bytes(good)
    assert f0.WaitForTask(pb.WaitRequest(wait_seconds=0.1), timeout=5).kind == pb.IDLE
