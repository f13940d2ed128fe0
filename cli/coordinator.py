"""``fedquilt coordinator serve``: the federation's coordinator service."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Add ``coordinator`` and its subcommands."""
    p = sub.add_parser("coordinator", help="run the coordinator service (mTLS gRPC, rounds, model store)")
    csub = p.add_subparsers(dest="coordinator_command", metavar="ACTION")
    serve = csub.add_parser(
        "serve", help="serve the federation described by a config file",
        description="Start the mutual-TLS gRPC server, run rounds with the configured rule (secure aggregation on by "
                    "default), and publish each round as a signed PEFT adapter version in the model store.")
    serve.add_argument("--config", required=True, type=Path, help="coordinator TOML file (see docs/coordinator.md)")
    serve.add_argument("--exit-when-done", action="store_true",
                       help="exit once every planned round is published (demos, batch jobs)")
    serve.set_defaults(func=_serve)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _serve(args: argparse.Namespace) -> int:
    from ..coordinator.config import load_config
    from ..coordinator.server import serve

    return serve(load_config(args.config), exit_when_done=args.exit_when_done)
