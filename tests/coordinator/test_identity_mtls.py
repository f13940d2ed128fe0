"""Wire test: real mutual TLS with certificates from `pki`, identity read from grpc's auth_context."""

from __future__ import annotations

from concurrent import futures
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedquilt.coordinator import pki
from fedquilt.coordinator.identity import (
    Authorizer,
    PermissionDenied,
    Unauthenticated,
    peer_from_auth_context,
)
from fedquilt.coordinator.pki import Role

TIMEOUT = 5.0


class _World:
    def __init__(self, root: Path) -> None:
        self.ca_dir, self.out = root / "ca", root / "out"
        pki.init_ca(self.ca_dir)
        self.coord = pki.issue(self.ca_dir, self.out, "coord", Role.COORDINATOR)
        self.site = pki.issue(self.ca_dir, self.out, "hospital-a", Role.SITE)
        self.evil_ca = pki.init_ca(root / "evil").cert
        self.foreign = pki.issue(root / "evil", root / "evil-out", "hospital-a", Role.SITE)
        self.seen: list[dict[str, list[bytes]]] = []
        self.port = 0


def _whoami_handler(world: _World, authorizer: Authorizer) -> grpc.GenericRpcHandler:
    def respond(need: Role) -> grpc.RpcMethodHandler:
        def call(request: bytes, context: grpc.ServicerContext) -> bytes:
            ctx = {k: list(v) for k, v in context.auth_context().items()}
            world.seen.append(ctx)
            try:
                peer = authorizer.check(ctx, need)
            except Unauthenticated as exc:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            except PermissionDenied as exc:
                context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
            return f"{peer.site_id}/{peer.role.value}/{peer.serial}".encode()

        return grpc.unary_unary_rpc_method_handler(call)

    return grpc.method_handlers_generic_handler(
        "fedquilt.test.Whoami", {"Site": respond(Role.SITE), "Admin": respond(Role.ADMIN)}
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_World]:
    w = _World(tmp_path_factory.mktemp("mtls"))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    server.add_generic_rpc_handlers((_whoami_handler(w, Authorizer.from_ca_dir(w.ca_dir)),))
    creds = grpc.ssl_server_credentials(
        [(w.coord.key.read_bytes(), w.coord.cert.read_bytes())],
        root_certificates=(w.ca_dir / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    w.port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    yield w
    server.stop(grace=None)


def _channel(world: _World, identity: pki.CertPaths | None, ca: Path | None = None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=(ca or world.ca_dir / "ca.pem").read_bytes(),
        private_key=identity.key.read_bytes() if identity else None,
        certificate_chain=identity.cert.read_bytes() if identity else None,
    )
    return grpc.secure_channel(f"127.0.0.1:{world.port}", creds)


def _health(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT).status)


def _whoami(channel: grpc.Channel, method: str = "Site") -> bytes:
    return bytes(channel.unary_unary(f"/fedquilt.test.Whoami/{method}")(b"", timeout=TIMEOUT))


def test_site_cert_connects_and_server_sees_its_identity(world: _World) -> None:
    serial = x509.load_pem_x509_certificate(world.site.cert.read_bytes()).serial_number
    with _channel(world, world.site) as channel:
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
        assert _whoami(channel) == f"hospital-a/site/{serial}".encode()
    peer = peer_from_auth_context(world.seen[-1])
    assert (peer.site_id, peer.role, peer.serial) == ("hospital-a", Role.SITE, serial)


def test_site_cert_on_admin_method_is_permission_denied(world: _World) -> None:
    with _channel(world, world.site) as channel, pytest.raises(grpc.RpcError) as info:
        _whoami(channel, "Admin")
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "needs admin" in (info.value.details() or "")


def test_client_without_cert_is_refused_in_the_handshake(world: _World) -> None:
    calls = len(world.seen)
    with _channel(world, None) as channel, pytest.raises(grpc.RpcError) as info:
        _health(channel)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert len(world.seen) == calls


def test_client_with_cert_from_another_ca_is_refused(world: _World) -> None:
    calls = len(world.seen)
    with _channel(world, world.foreign) as channel, pytest.raises(grpc.RpcError) as info:
        _whoami(channel)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert len(world.seen) == calls


def test_client_that_does_not_trust_the_server_ca_refuses_it(world: _World) -> None:
    with _channel(world, world.site, ca=world.evil_ca) as channel:
        with pytest.raises(grpc.RpcError) as info:
            _health(channel)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE


def test_revocation_takes_effect_on_the_next_call(world: _World) -> None:
    late = pki.issue(world.ca_dir, world.out, "hospital-z", Role.SITE)
    with _channel(world, late) as channel:
        assert _whoami(channel).startswith(b"hospital-z/site/")
        pki.revoke(world.ca_dir, late.cert)
        with pytest.raises(grpc.RpcError) as info:
            _whoami(channel)  # same TLS connection: only our CRL check can stop it
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in (info.value.details() or "")
