"""Turn a failed RPC of a one-shot command (``pull``, ``admin``, ``versions``) into one plain sentence."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import grpc

_PLAIN = {
    grpc.StatusCode.PERMISSION_DENIED: "refused (this certificate's role may not do that)",
    grpc.StatusCode.UNAUTHENTICATED: "refused this certificate",
    grpc.StatusCode.NOT_FOUND: "has no such thing",
    grpc.StatusCode.INVALID_ARGUMENT: "refused the request",
    grpc.StatusCode.FAILED_PRECONDITION: "cannot do that now",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "is over a limit",
    grpc.StatusCode.DEADLINE_EXCEEDED: "did not answer in time",
    grpc.StatusCode.UNIMPLEMENTED: "does not offer this call (an older coordinator?)",
}


class CommandFailed(Exception):
    """A command's RPC failed; the message says why in plain words."""


@contextmanager
def plain_rpc_errors(address: str, ca: Path, cert: Path, key: Path, server_name: str | None, action: str,
                     role: str | None = None) -> Iterator[None]:
    """Re-raise a ``grpc.RpcError`` as ``CommandFailed`` naming the cause (UNAVAILABLE is diagnosed)."""
    try:
        yield
    except grpc.RpcError as exc:
        code = exc.code()
        if code is grpc.StatusCode.UNAVAILABLE:
            from ..agent.connection_diagnosis import Problem, diagnose

            found = diagnose(address, ca, cert, key, server_name, role=role)
            why = found.message if found.problem is not Problem.OK else f"coordinator at {address} unavailable: " \
                                                                        f"{exc.details()}"
            raise CommandFailed(f"{action}: {why}") from None
        details = exc.details() or ""
        raise CommandFailed(f"{action}: the coordinator at {address} {_PLAIN.get(code, code.name)}: {details}") from None
