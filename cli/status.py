"""``fedquilt status``: the federation at a glance (state, current round, sites, versions) for an operator."""

from __future__ import annotations

import argparse
import json
from typing import Any, Mapping

from .connection import add_connection_args, connection_of


def register(sub: Any) -> None:
    """Add ``status``."""
    p = sub.add_parser(
        "status", help="the federation at a glance: running / paused / finished, current round, sites",
        description="Ask the coordinator (Admin.Status, admin certificates only) and print the federation's state, "
                    "the round in flight with each site's progress, the enrolled sites and the published rounds. "
                    "Sites and consumers read the same facts from the status page (docs/observability.md).")
    p.add_argument("--json", action="store_true", help="print the status as JSON (the layout of the status page's /status.json)")
    add_connection_args(p, cert_help="an admin certificate (`fedquilt certs issue --role admin`)", config=False)
    p.set_defaults(func=_status)


def state_of(status: Mapping[str, Any]) -> str:
    """finished / running / paused, as the status page says it."""
    if status.get("state"):
        return str(status["state"])
    if int(status.get("rounds_done", 0)) >= int(status.get("rounds_planned", 1)):
        return "finished"
    return "running" if status.get("running") else "paused"


def render(status: Mapping[str, Any]) -> str:
    """A few lines for a terminal."""
    sites = list(status.get("sites", []))
    online = sum(1 for s in sites if s.get("online"))
    lines = [f"federation {status['federation']} ({status['rule']}, model {status['model']}): {state_of(status)}, "
             f"round {status['rounds_done']} of {status['rounds_planned']} done, latest version "
             f"{status.get('global_version') or 'none'}",
             f"sites: {online} of {len(sites)} online"]
    rnd = status.get("current_round")
    if rnd:
        lines.append(f"round {rnd['round']} ({rnd['id']}): {rnd['stage']}"
                     + (f" phase {rnd['phase']}" if rnd["stage"] == "phase" else "")
                     + f", cohort {', '.join(rnd['cohort'])}")
    for s in sites:
        lines.append(f"  {s['site']:<24} {'online' if s.get('online') else 'offline':<8} n={s.get('num_samples')} "
                     f"rank={s.get('rank')} last seen {s.get('last_seen_seconds_ago')}s ago")
    for h in status.get("history", [])[-5:]:
        lines.append(f"  round {h['round']}: " + (f"published {h['version']} ({h.get('contributors')} contributors)"
                                                   if h.get("version") else f"discarded: {h.get('discarded')}"))
    return "\n".join(lines)


def _status(args: argparse.Namespace) -> int:
    from ..proto import federation_pb2 as pb
    from ..proto import federation_pb2_grpc as pb_grpc
    from ..proto.status_wire import status_from_pb

    conn = connection_of(args)
    with conn.plain_errors("status", role="admin"):
        stub = pb_grpc.AdminStub(conn.channel())  # type: ignore[no-untyped-call]  # generated, untyped
        status = status_from_pb(stub.Status(pb.StatusRequest(), timeout=30).status)
    print(json.dumps(status, indent=2) if args.json else render(status))
    return 0
