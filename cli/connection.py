"""The flags every one-shot client command takes to reach the coordinator (``pull``, ``versions``, ``status``)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc


@dataclass(frozen=True)
class Connection:
    """Where the coordinator is and the identity to present."""

    address: str
    server_name: str | None
    ca: Path
    cert: Path
    key: Path

    def channel(self) -> grpc.Channel:
        """A mutual-TLS channel."""
        from ..agent.transport import channel

        return channel(self.address, self.ca.read_bytes(), self.cert.read_bytes(), self.key.read_bytes(),
                       self.server_name)

    def plain_errors(self, action: str, role: str | None = None) -> Any:
        """A context that turns a failed RPC into one sentence (see ``rpc_messages``)."""
        from .rpc_messages import plain_rpc_errors

        return plain_rpc_errors(self.address, self.ca, self.cert, self.key, self.server_name, action, role)


def add_connection_args(p: argparse.ArgumentParser, *, cert_help: str = "your certificate (PEM) issued by "
                        "`fedquilt certs issue`", config: bool = True) -> None:
    """``--coordinator --server-name --ca --cert --key`` (and ``--agent-config``)."""
    p.add_argument("--coordinator", default="localhost:7443", help="coordinator address (default localhost:7443)")
    p.add_argument("--server-name", help="TLS name to expect on the coordinator certificate (default: the host)")
    p.add_argument("--ca", type=Path, help="federation CA certificate (PEM)")
    p.add_argument("--cert", type=Path, help=cert_help)
    p.add_argument("--key", type=Path, help="its private key (PEM)")
    if config:
        p.add_argument("--agent-config", type=Path,
                       help="take address and certificates from a TOML with [coordinator] and [tls] (an agent's "
                            "config, or a consumer's with only those two sections)")


def connection_of(args: argparse.Namespace) -> Connection:
    """The connection the flags (or ``--agent-config``) describe; missing files are named."""
    address, server_name = args.coordinator, args.server_name
    ca, cert, key = args.ca, args.cert, args.key
    if getattr(args, "agent_config", None):
        from ..agent.config import load_client_config

        cfg = load_client_config(args.agent_config)
        address, server_name = cfg.coordinator.address, server_name or cfg.coordinator.server_name
        ca, cert, key = ca or cfg.tls.ca, cert or cfg.tls.cert, key or cfg.tls.key
    if not (ca and cert and key):
        raise ValueError("give --ca, --cert and --key (or --agent-config)")
    for what, path in (("--ca", ca), ("--cert", cert), ("--key", key)):
        if not Path(path).is_file():
            raise ValueError(f"{what} {path} does not exist")
    return Connection(address, server_name, Path(ca), Path(cert), Path(key))
