"""The ``fedquilt`` command: one entry point, one module per subcommand group."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

# Subcommand modules, each exposing ``register(subparsers) -> None`` that sets ``func`` on its parser.
_COMMANDS = ("certs", "coordinator", "agent", "pull", "merge", "demo", "admin", "fingerprint",
             "versions", "status", "simulate")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (every subcommand registered)."""
    parser = argparse.ArgumentParser(
        prog="fedquilt",
        description=(
            "Federated LoRA fine-tuning with secure aggregation over mutual-TLS gRPC. "
            "Start with `fedquilt demo` to see a whole federation run on this machine."
        ),
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING; default INFO)")
    parser.add_argument("--log-json", action="store_true", help="structured JSON log lines on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        try:
            module = importlib.import_module(f"fedquilt.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"fedquilt.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from .logs import configure_logging

    configure_logging(args.log_level, json_lines=args.log_json)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence prints, never tracebacks
        if args.log_level.upper() == "DEBUG":
            raise
        print(f"fedquilt: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
