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
    check = csub.add_parser(
        "check", help="validate a config, its certificates, CRL and ports; print what serve would do (starts nothing)",
        description="Load the config strictly (an unknown key is refused, naming the keys allowed there), check the "
                    "coordinator certificate (issued by the CA, role coordinator, not expired, matching its key, the "
                    "names agents will use), the CRL, the rule and whether the ports are free, then print what "
                    "`coordinator serve` would do. Exit 0 when serve would start, 1 otherwise.")
    check.add_argument("--config", required=True, type=Path, help="coordinator TOML file (see docs/coordinator.md)")
    check.set_defaults(func=_check)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _serve(args: argparse.Namespace) -> int:
    import logging

    from ..coordinator.config import load_config
    from ..coordinator.server import serve
    from .preflight import coordinator_checks

    cfg = load_config(args.config)
    for line in coordinator_checks(cfg):  # a site certificate or a busy port stops here, in plain words
        if line.startswith("warning: "):
            logging.getLogger("fedquilt.coordinator").warning("%s", line.removeprefix("warning: "))
    return serve(cfg, exit_when_done=args.exit_when_done)


def _check(args: argparse.Namespace) -> int:
    from ..coordinator.config import load_config
    from .preflight import coordinator_checks

    cfg = load_config(args.config)
    print(f"config {args.config}: valid")
    for line in coordinator_checks(cfg):
        print(line)
    print("ok: `fedquilt coordinator serve` would start")
    return 0
