"""``fedquilt admin``: operator RPCs over mTLS with an admin certificate."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from .connection import connection_of


def register(sub: Any) -> None:
    """Add ``admin`` and its actions."""
    p = sub.add_parser("admin", help="operator commands: status, sites, start/stop the federation")
    p.add_argument("--coordinator", default="localhost:7443", help="coordinator address (default localhost:7443)")
    p.add_argument("--ca", type=Path, required=True, help="federation CA certificate (PEM)")
    p.add_argument("--cert", type=Path, required=True, help="an admin certificate (`fedquilt certs issue --role admin`)")
    p.add_argument("--key", type=Path, required=True, help="its private key")
    p.add_argument("--server-name", help="TLS name to expect on the coordinator certificate")
    asub = p.add_subparsers(dest="admin_command", metavar="ACTION", required=True)
    asub.add_parser("status", help="federation, current round, history (as JSON, the layout of /status.json)").set_defaults(func=_status)
    asub.add_parser("sites", help="enrolled sites and whether they are online").set_defaults(func=_sites)
    asub.add_parser("start", help="let the federation run rounds").set_defaults(func=_start)
    asub.add_parser("stop", help="pause: discard the round in flight, open no new one").set_defaults(func=_stop)


def _stub(args: argparse.Namespace) -> Any:
    from ..proto import federation_pb2_grpc as pb_grpc

    return pb_grpc.AdminStub(connection_of(args).channel())  # type: ignore[no-untyped-call]  # generated, untyped


def _plain(args: argparse.Namespace) -> Any:
    """Failed admin RPCs as one sentence (an UNAVAILABLE is diagnosed), not a gRPC dump."""
    return connection_of(args).plain_errors(f"admin {args.admin_command}", role="admin")


def _status(args: argparse.Namespace) -> int:
    from ..proto import federation_pb2 as pb

    from ..proto.status_wire import status_from_pb

    with _plain(args):
        status = status_from_pb(_stub(args).Status(pb.StatusRequest(), timeout=30).status)
    print(json.dumps(status, indent=2))
    return 0


def _sites(args: argparse.Namespace) -> int:
    from ..proto import federation_pb2 as pb

    from ..proto.status_wire import iso_of

    with _plain(args):
        sites = _stub(args).ListSites(pb.ListSitesRequest(), timeout=30).sites
    now = time.time()
    print(f"{'site':<24} {'online':<7} {'samples':>8} {'rank':>5}  last seen (UTC)")
    for s in sites:
        seen = "never"
        if s.HasField("last_seen_at"):
            ago = max(now - s.last_seen_at.ToNanoseconds() / 1e9, 0.0)
            seen = f"{iso_of(s.last_seen_at)[:19].replace('T', ' ')} ({ago:.0f}s ago)"
        print(f"{s.site_id:<24} {'yes' if s.online else 'no':<7} {s.num_samples:>8} {s.lora_rank:>5}  {seen}")
    return 0


def _set(args: argparse.Namespace, running: bool) -> int:
    from ..proto import federation_pb2 as pb

    from ..proto.status_wire import status_from_pb
    from .status import state_of

    with _plain(args):
        reply = _stub(args).SetFederationState(pb.FederationStateRequest(running=running), timeout=30)
    status = status_from_pb(reply.status)

    done = " (finished: every planned round is published)" if state_of(status) == "finished" else ""
    print(f"federation {status['federation']}: {'running' if status['running'] else 'paused'}{done}")
    return 0


def _start(args: argparse.Namespace) -> int:
    return _set(args, True)


def _stop(args: argparse.Namespace) -> int:
    return _set(args, False)
