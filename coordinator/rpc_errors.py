"""Domain exceptions -> precise gRPC status codes, with one log line per refusal."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterator, NoReturn

import grpc

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
    (errors.NotEnrolled, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Mismatch, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.StaleStep, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.NotInCohort, grpc.StatusCode.PERMISSION_DENIED),
    (errors.Duplicate, grpc.StatusCode.ALREADY_EXISTS),
    (errors.UnknownVersion, grpc.StatusCode.NOT_FOUND),
    (registry.UnknownVersion, grpc.StatusCode.NOT_FOUND),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
)


def status_for(exc: BaseException) -> grpc.StatusCode | None:
    """The status code a domain exception maps to (None: not a domain error)."""
    for kind, code in _STATUS:
        if isinstance(exc, kind):
            return code
    return None


def abort(context: grpc.ServicerContext, exc: BaseException, method: str, metrics: Any = None) -> NoReturn:
    """Log (and count) the refusal and end the call with its precise status."""
    code = status_for(exc) or grpc.StatusCode.INTERNAL
    if metrics is not None:
        metrics.record_rpc_error(method, code)
    message = str(exc) if code is not grpc.StatusCode.INTERNAL else "internal error (see coordinator log)"
    log.warning("refused %s: %s %s", method, code.name, exc, extra={"rpc": method, "status": code.name})
    context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


@contextmanager
def translated(context: grpc.ServicerContext, method: str, metrics: Any = None) -> Iterator[None]:
    """Run a servicer body; any domain error becomes its gRPC status and a log line."""
    try:
        yield
    except grpc.RpcError:
        raise
    except Exception as exc:
        if status_for(exc) is None:
            log.exception("internal error in %s", method)
        abort(context, exc, method, metrics)
