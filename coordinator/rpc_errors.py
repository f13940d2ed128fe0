"""Domain exceptions -> precise gRPC status codes, with at most one log line per peer and RPC at a time.

A refusal is logged once, then at most once per ``every`` seconds for the same (peer, RPC) pair, with
the count of refusals left out since: a hostile peer sending 10,000 malformed messages costs a few log
lines, not megabytes. An exception that is not a domain error is a bug: it is answered INTERNAL with a
traceback in the log (rate-limited the same way).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, NoReturn

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from ..proto.codec import CodecError, StreamTooLarge
from . import errors, identity, registry

log = logging.getLogger("fedquilt.coordinator.rpc")

_STATUS: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (identity.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (identity.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (identity.RevocationListError, grpc.StatusCode.UNAVAILABLE),
    (errors.TooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (StreamTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (CodecError, grpc.StatusCode.INVALID_ARGUMENT),
    (DecodeError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotEnrolled, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Mismatch, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.StaleStep, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.NotInCohort, grpc.StatusCode.PERMISSION_DENIED),
    (errors.Duplicate, grpc.StatusCode.ALREADY_EXISTS),
    (errors.UnknownVersion, grpc.StatusCode.NOT_FOUND),
    (registry.UnknownVersion, grpc.StatusCode.NOT_FOUND),
    (errors.StreamDeadline, grpc.StatusCode.DEADLINE_EXCEEDED),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
)
_MAX_PEERS = 4096


def status_for(exc: BaseException) -> grpc.StatusCode | None:
    """The status code a domain exception maps to (None: not a domain error)."""
    for kind, code in _STATUS:
        if isinstance(exc, kind):
            return code
    return None


class RefusalLog:
    """Rate-limited refusal logging: the first refusal per (peer, RPC), then one line per ``every`` seconds."""

    def __init__(self, every: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        """Log at most one line per (peer, RPC) each ``every`` seconds (0: every refusal)."""
        self.every, self.clock = every, clock
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def refused(self, peer: str, method: str, code: grpc.StatusCode, exc: BaseException) -> None:
        """Record one refusal; log it unless this pair logged within ``every`` seconds."""
        now = self.clock()
        key = (peer, method)
        last, skipped = self._last.get(key, (-float("inf"), 0))
        if now - last < self.every:
            self._last[key] = (last, skipped + 1)
            return
        if len(self._last) >= _MAX_PEERS:
            self._last.clear()
        self._last[key] = (now, 0)
        more = f" (+{skipped} more refusals since the last line)" if skipped else ""
        text = str(exc)[:300]
        extra = {"rpc": method, "status": code.name, "peer": peer}
        if code is grpc.StatusCode.INTERNAL:
            log.error("internal error in %s from %s%s", method, peer, more, exc_info=exc, extra=extra)
        else:
            log.warning("refused %s from %s: %s %s%s", method, peer, code.name, text, more, extra=extra)


async def refuse(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException, method: str, peer: str,
                 refusals: RefusalLog, metrics: Any = None) -> NoReturn:
    """Log (rate-limited) and count the refusal, then end the call with its precise status."""
    if isinstance(exc, asyncio.TimeoutError):
        exc = errors.StreamDeadline(f"{method}: the peer sent nothing in time")
    code = status_for(exc) or grpc.StatusCode.INTERNAL
    if metrics is not None:
        metrics.record_rpc_error(method, code)
    refusals.refused(peer, method, code, exc)
    message = str(exc)[:1000] if code is not grpc.StatusCode.INTERNAL else "internal error (see coordinator log)"
    await context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover
