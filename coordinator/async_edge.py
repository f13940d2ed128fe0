"""The coordinator's gRPC server: ``grpc.aio`` on its own event-loop thread, the domain on a bounded pool.

Long polls and slow upload streams are coroutines, so a few hundred waiting sites cost no threads;
``maximum_concurrent_rpcs`` caps calls in flight (grpc answers RESOURCE_EXHAUSTED past it) and
``PeerLimits`` caps them per certificate. ``grpc.so_reuseport`` is off, so a second coordinator on the
same port fails with "address already in use" instead of silently sharing it.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Coroutine, TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..proto import codec
from ..proto import federation_pb2 as pb
from .config import CoordinatorConfig
from .identity import Authorizer
from .metrics import Metrics
from .orchestrator import Orchestrator
from .peer_limits import PeerLimits
from .pki import Role
from .registry import FileModelStore
from .rpc_errors import RefusalLog
from .operator_services import AdminService, ModelsService
from .rpc_handlers import Edge, generic_handlers
from .servicer import FederationService
from .wakeups import Wakeups

T = TypeVar("T")


class AddressInUse(OSError):
    """The listen address is taken (e.g. by another coordinator)."""


class AsyncEdge:
    """Starts and stops the aio server; ``wakeups.changed()`` is safe to call from any thread."""

    def __init__(self, cfg: CoordinatorConfig, orch: Orchestrator, store: FileModelStore, authz: Authorizer,
                 metrics: Metrics, key_pem: bytes, cert_pem: bytes, ca_pem: bytes, crl_path: Path | None = None) -> None:
        self.cfg, self.orch, self.store, self.authz, self.metrics = cfg, orch, store, authz, metrics
        self.crl_path = crl_path
        """The CA-signed CRL served to sites and streamed with every pull (its signature is what they trust)."""
        self._creds = grpc.ssl_server_credentials([(key_pem, cert_pem)], root_certificates=ca_pem,
                                                  require_client_auth=True)
        self.loop = asyncio.new_event_loop()
        self.pool = ThreadPoolExecutor(max_workers=cfg.server.max_workers, thread_name_prefix="domain")
        self._thread = threading.Thread(target=self.loop.run_forever, name="grpc-aio", daemon=True)
        self.server: grpc.aio.Server | None = None
        self.wakeups: Wakeups = Wakeups(self.loop, lambda: orch.step_counter)

    def _on_loop(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> int:
        """Bind, start serving; returns the port (raises AddressInUse when the address is taken)."""
        self._thread.start()
        try:
            return self._on_loop(self._start())
        except BaseException:
            self.stop(0)
            raise

    async def _start(self) -> int:
        srv = self.cfg.server
        options = [("grpc.max_receive_message_length", srv.max_message_bytes),
                   ("grpc.max_send_message_length", srv.max_message_bytes),
                   ("grpc.so_reuseport", 0)]
        server = grpc.aio.server(options=options, maximum_concurrent_rpcs=srv.maximum_concurrent_rpcs)
        self.server = server
        edge = Edge(self.authz, self.metrics, PeerLimits(srv.max_calls_per_peer), RefusalLog(srv.log_refusals_every),
                    self.pool, min(codec.CHUNK_BYTES, srv.max_message_bytes // 2))  # room for the other fields
        services = (
            FederationService(edge, self.orch, self.wakeups, max_upload_bytes=srv.max_upload_bytes,
                              long_poll=srv.long_poll_seconds, upload_idle=srv.upload_idle_seconds,
                              upload_total=srv.upload_stream_seconds, crl_path=self.crl_path),
            ModelsService(edge, self.store, {Role(r) for r in srv.pull_roles}, crl_path=self.crl_path),
            AdminService(edge, self.orch, self.wakeups),
        )
        server.add_generic_rpc_handlers(generic_handlers(*services))
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        names = [d.full_name for d in pb.DESCRIPTOR.services_by_name.values()] + [
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, server)
        try:
            port = server.add_secure_port(srv.listen, self._creds)
        except RuntimeError as exc:
            raise AddressInUse(f"cannot listen on {srv.listen}: address already in use ({exc})") from None
        if port == 0:
            raise AddressInUse(f"cannot listen on {srv.listen}: address already in use")
        await server.start()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        return port

    def stop(self, grace: float = 1.0) -> None:
        """Stop serving (calls in flight get ``grace`` seconds), then the loop and the pool."""
        if self._thread.is_alive():
            if self.server is not None:
                try:
                    self._on_loop(self.server.stop(grace), timeout=grace + 10)
                except Exception:  # stopping must not fail a shutdown
                    pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
        self.pool.shutdown(wait=False, cancel_futures=True)
