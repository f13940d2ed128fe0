"""What every gRPC service of the coordinator shares: the raw-bytes handlers, the caller's identity, limits.

Every method is registered with raw bytes in and out, so a malformed protobuf is ours to refuse
(INVALID_ARGUMENT, one rate-limited log line) rather than grpc's (INTERNAL and a traceback). Before any
work, a call takes one of its peer's slots (``PeerLimits``); any error ends the call with its precise
status (``rpc_errors.refuse``). The domain stays synchronous and runs on a bounded thread pool
(``Edge.run``) for the short time each call takes.
"""

from __future__ import annotations

import asyncio
import functools
import time
from contextlib import asynccontextmanager
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Mapping, Protocol, Sequence, TypeVar, cast

import grpc
import grpc.aio
from google.protobuf.message import Message

from ..proto import codec
from .identity import Authorizer
from .metrics import Metrics
from .peer_limits import PeerLimits
from .pki import Role
from .rpc_errors import RefusalLog, refuse
from .steps import SiteId


T = TypeVar("T")
M = TypeVar("M", bound=Message)
Ctx = Any  # grpc.aio.ServicerContext; its stubs are generic over raw bytes here
if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]


@dataclass
class Edge:
    """What every service shares: identity, limits, refusal log, metrics and the domain's thread pool."""

    authz: Authorizer
    metrics: Metrics
    limits: PeerLimits
    refusals: RefusalLog
    pool: Executor
    chunk_bytes: int = codec.CHUNK_BYTES

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a (short, synchronous) domain call on the pool."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(fn, *args))

    def check(self, context: Ctx, need: Role | set[Role]) -> SiteId:
        """The caller's id if its certificate may do this."""
        return SiteId(self.authz.check(_auth(context), need).site_id)


def _auth(context: Ctx) -> Mapping[str, Sequence[bytes]]:
    return cast("Mapping[str, Sequence[bytes]]", context.auth_context())


def _peer(context: Ctx) -> str:
    """The certificate's CN when TLS gave one, else the transport address (for limits and log lines)."""
    names = _auth(context).get("x509_common_name") or ()
    return bytes(names[0]).decode(errors="replace")[:100] if names else str(context.peer())[:100]


def decode(kind: type[M], raw: bytes) -> M:
    """Parse a request; a malformed one raises DecodeError (INVALID_ARGUMENT)."""
    return kind.FromString(raw)


@asynccontextmanager
async def guarded(edge: Edge, context: Ctx, method: str) -> AsyncIterator[None]:
    """Hold one of the peer's call slots; any error ends the call with its precise status."""
    peer = _peer(context)
    try:
        with edge.limits.call(peer, method):
            yield
    except grpc.aio.AbortError:
        raise
    except Exception as exc:
        await refuse(context, exc, method, peer, edge.refusals, edge.metrics)


def unary(edge: Edge, method: str, kind: type[M], body: Callable[[M, Ctx], Awaitable[Message]]) -> Handler:
    """A unary method handler on raw bytes."""

    async def call(raw: bytes, context: Ctx) -> bytes:
        async with guarded(edge, context, method):
            return (await body(decode(kind, raw), context)).SerializeToString()
        raise AssertionError("unreachable: guarded ends the call")  # pragma: no cover

    return grpc.unary_unary_rpc_method_handler(call)


def unary_stream(edge: Edge, method: str, kind: type[M],
                 body: Callable[[M, Ctx], Awaitable[Sequence[Message]]]) -> Handler:
    """A server-streaming handler: ``body`` returns every reply message (built before the first is sent)."""

    async def call(raw: bytes, context: Ctx) -> AsyncIterator[bytes]:
        async with guarded(edge, context, method):
            for reply in await body(decode(kind, raw), context):
                yield reply.SerializeToString()

    return grpc.unary_stream_rpc_method_handler(call)


class Service(Protocol):
    """A gRPC service served on raw bytes: its full name and its method handlers."""

    name: str

    def handlers(self) -> dict[str, Handler]:
        """Method name -> handler."""
        ...


def generic_handlers(*services: Service) -> list[grpc.GenericRpcHandler]:
    """One generic handler per service (raw bytes in and out)."""
    return [grpc.method_handlers_generic_handler(s.name, s.handlers()) for s in services]
