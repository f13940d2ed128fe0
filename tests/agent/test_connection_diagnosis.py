"""Each way a site's connection can fail gets its own plain message, and the agent gives up on TLS mismatches.

Real TLS servers on port 0 (gRPC with mutual TLS, certificates from in-test CAs); real gRPC calls
fail with UNAVAILABLE for every one of these cases — the diagnosis is what tells them apart.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import time
from concurrent import futures
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest
from grpc_health.v1 import health, health_pb2_grpc

from fedquilt.agent.connection_diagnosis import ConnectionProblem, Problem, diagnose
from fedquilt.agent.transport import Transport, channel
from fedquilt.coordinator.pki import Role, init_ca, issue
from fedquilt.proto import federation_pb2 as pb
from fedquilt.proto import federation_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("pki")
    init_ca(root / "ca")
    init_ca(root / "other-ca", name="someone else's CA")
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=10)
    return {
        "root": root,
        "coord": issue(root / "ca", root / "coord", "coordinator", Role.COORDINATOR),
        "coord-remote": issue(root / "ca", root / "coord-remote", "coordinator", Role.COORDINATOR,
                              hosts=["coord.example.org"]),
        "coord-expired": issue(root / "ca", root / "coord-expired", "coordinator", Role.COORDINATOR, days=1, now=past),
        "site-as-coord": issue(root / "ca", root / "site-as-coord", "hospital-z", Role.SITE),
        "site": issue(root / "ca", root / "site", "hospital-a", Role.SITE),
        "site-expired": issue(root / "ca", root / "site-expired", "hospital-b", Role.SITE, days=1, now=past),
        "foreign-site": issue(root / "other-ca", root / "foreign", "hospital-c", Role.SITE),
    }


@pytest.fixture
def serve(pki: dict[str, Any]) -> Iterator[Any]:
    servers: list[grpc.Server] = []

    def start(server_cert: str) -> str:
        paths = pki[server_cert]
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
        creds = grpc.ssl_server_credentials([(paths.key.read_bytes(), paths.cert.read_bytes())],
                                            root_certificates=(pki["root"] / "ca" / "ca.pem").read_bytes(),
                                            require_client_auth=True)
        port = server.add_secure_port("127.0.0.1:0", creds)
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for s in servers:
        s.stop(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _site(pki: dict[str, Any], who: str = "site", ca: str = "ca") -> tuple[Path, Path, Path]:
    return pki["root"] / ca / "ca.pem", pki[who].cert, pki[who].key


CASES = {
    # name: (server certificate, client identity, client CA, server_name, expected problem, words in the message)
    "unknown-ca": ("coord", "foreign-site", "other-ca", "localhost", Problem.UNKNOWN_CA,
                   ("not issued by the CA", "ca.pem")),
    "name-mismatch": ("coord-remote", "site", "ca", None, Problem.NAME_MISMATCH,
                      ("not valid for the name '127.0.0.1'", "coord.example.org", "--server-name")),
    "server-expired": ("coord-expired", "site", "ca", "localhost", Problem.SERVER_EXPIRED, ("expired", "rotate")),
    "wrong-role": ("site-as-coord", "site", "ca", "localhost", Problem.WRONG_ROLE,
                   ("not a coordinator certificate", "hospital-z", "role site", "--role coordinator")),
    "client-expired": ("coord", "site-expired", "ca", "localhost", Problem.LOCAL_IDENTITY,
                       ("hospital-b", "expired", "certs rotate")),
    "client-from-other-ca": ("coord", "foreign-site", "ca", "localhost", Problem.LOCAL_IDENTITY,
                             ("is not issued by the CA in", "someone else")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_tls_failure_has_its_own_message(pki: dict[str, Any], serve: Any, case: str) -> None:
    server_cert, who, ca_name, server_name, problem, words = CASES[case]
    address = serve(server_cert)
    ca, cert, key = _site(pki, who, ca_name)
    chan = channel(address, ca.read_bytes(), cert.read_bytes(), key.read_bytes(), server_name)
    with pytest.raises(grpc.RpcError) as err:  # what gRPC alone says: the same for every case
        pb_grpc.FederationStub(chan).Hello(pb.HelloRequest(), timeout=5)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    found = diagnose(address, ca, cert, key, server_name, role="site")
    assert found.problem is problem, found
    for w in words:
        assert w in found.message, (w, found.message)


def test_messages_differ_between_kinds(pki: dict[str, Any], serve: Any) -> None:
    found = {}
    for case, (server_cert, who, ca_name, server_name, _, _) in CASES.items():
        address = serve(server_cert)
        found[case] = diagnose(address, *_site(pki, who, ca_name), server_name)
    assert len({d.message.replace(address, "ADDR") for d in found.values()}) == len(CASES)
    server_side = [found[c].problem for c in ("unknown-ca", "name-mismatch", "server-expired", "wrong-role")]
    assert len(set(server_side)) == 4


def test_nothing_listening(pki: dict[str, Any]) -> None:
    address = f"127.0.0.1:{_free_port()}"
    found = diagnose(address, *_site(pki), "localhost")
    assert found.problem is Problem.NOTHING_LISTENING and "nothing is listening at " + address in found.message


def test_not_tls(pki: dict[str, Any]) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    import threading

    def answer() -> None:
        conn, _ = listener.accept()
        conn.recv(1024)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    found = diagnose(f"127.0.0.1:{listener.getsockname()[1]}", *_site(pki), "localhost")
    listener.close()
    assert found.problem is Problem.NOT_TLS, found


def test_working_connection_is_ok(pki: dict[str, Any], serve: Any) -> None:
    assert diagnose(serve("coord"), *_site(pki), "localhost").problem is Problem.OK


def test_transport_says_it_once_and_gives_up(pki: dict[str, Any], serve: Any,
                                             caplog: pytest.LogCaptureFixture) -> None:
    address = serve("coord-remote")
    ca, cert, key = _site(pki)
    chan = channel(address, ca.read_bytes(), cert.read_bytes(), key.read_bytes())
    transport = Transport(chan, max_backoff=0.01, sleep=lambda s: None, max_failed_handshakes=4,
                          diagnose=lambda: diagnose(address, ca, cert, key, None))
    caplog.set_level(logging.WARNING, logger="fedquilt.agent.transport")
    started = time.monotonic()
    with pytest.raises(ConnectionProblem) as err:
        transport.hello(pb.HelloRequest())
    assert err.value.diagnosis.problem is Problem.NAME_MISMATCH
    said = [r for r in caplog.records if "not valid for the name" in r.getMessage()]
    assert len(said) == 1 and time.monotonic() - started < 30


def test_nothing_listening_is_retried_not_fatal(pki: dict[str, Any]) -> None:
    address = f"127.0.0.1:{_free_port()}"
    ca, cert, key = _site(pki)
    chan = channel(address, ca.read_bytes(), cert.read_bytes(), key.read_bytes(), "localhost")
    transport = Transport(chan, max_backoff=0.01, sleep=lambda s: None, max_failed_handshakes=2, give_up_after=1.0,
                          diagnose=lambda: diagnose(address, ca, cert, key, "localhost"))
    with pytest.raises(grpc.RpcError) as err:  # gave up by time, not as a TLS mismatch
        transport.hello(pb.HelloRequest())
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE


class _SlowFederation(pb_grpc.FederationServicer):
    def __init__(self) -> None:
        self.hellos = 0

    def WaitForTask(self, request: pb.WaitRequest, context: grpc.ServicerContext) -> pb.Task:
        time.sleep(1.0)
        return pb.Task(step=request.after_step + 1, kind=pb.TRAIN)

    def Hello(self, request: pb.HelloRequest, context: grpc.ServicerContext) -> pb.HelloReply:
        self.hellos += 1
        return pb.HelloReply(site_id="x")


def test_long_poll_deadline_means_nothing_yet() -> None:
    servicer = _SlowFederation()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_FederationServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        transport = Transport(grpc.insecure_channel(f"127.0.0.1:{port}"), sleep=lambda s: None)
        reconnects: list[int] = []
        transport.on_reconnect = lambda: reconnects.append(1)
        transport.poll_slack = 0.1
        task = transport.wait(after_step=7, seconds=0.1)
        assert task.kind == pb.IDLE and task.step == 7
        assert reconnects == [] and servicer.hellos == 0
    finally:
        server.stop(0)


class _Busy(pb_grpc.FederationServicer):
    def __init__(self, refusals: int) -> None:
        self.refusals, self.calls = refusals, 0

    def Submit(self, request: pb.SubmitRequest, context: grpc.ServicerContext) -> pb.Ack:
        self.calls += 1
        if self.calls <= self.refusals:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many uploads at once")
        return pb.Ack(accepted=True)


@pytest.mark.parametrize(("refusals", "succeeds"), [(3, True), (50, False)])
def test_resource_exhausted_is_retried_a_few_times(refusals: int, succeeds: bool) -> None:
    servicer = _Busy(refusals)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_FederationServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        slept: list[float] = []
        transport = Transport(grpc.insecure_channel(f"127.0.0.1:{port}"), sleep=slept.append)
        if succeeds:
            assert transport.submit(pb.SubmitRequest()).accepted and servicer.calls == refusals + 1
            assert len(slept) == refusals and slept == sorted(slept) or len(slept) == refusals
        else:
            with pytest.raises(grpc.RpcError) as err:
                transport.submit(pb.SubmitRequest())
            assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and servicer.calls < 10
    finally:
        server.stop(0)
