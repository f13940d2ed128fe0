"""``fedquilt versions [MODEL]``: the published versions of a model (without MODEL: the federation's models)."""

from __future__ import annotations

import argparse
from typing import Any

from .connection import Connection, add_connection_args, connection_of


def register(sub: Any) -> None:
    """Add ``versions``."""
    p = sub.add_parser(
        "versions", help="list published versions of a model (or, with an admin certificate, the models)",
        description="List the versions of MODEL the coordinator publishes: version, round, rule, publish time, "
                    "the largest ε of its manifest (DP) and tags. Without MODEL, ask the coordinator which model its federation publishes (needs an admin "
                    "certificate) and list that one. Any certificate of the federation may list a named model.")
    p.add_argument("model", nargs="?", metavar="MODEL", help="model name ([federation] model of the coordinator)")
    add_connection_args(p)
    p.set_defaults(func=_versions)


def federation_models(conn: Connection) -> list[str]:
    """The models the coordinator's federation publishes (Admin.Status; admin certificates only)."""
    from ..proto import federation_pb2 as pb
    from ..proto import federation_pb2_grpc as pb_grpc

    with conn.plain_errors("list models (needs an admin certificate; or name the model: `fedquilt versions MODEL`)",
                           role=None):
        stub = pb_grpc.AdminStub(conn.channel())  # type: ignore[no-untyped-call]  # generated, untyped
        status = stub.Status(pb.StatusRequest(), timeout=30).status
    return [status.model]


def _versions(args: argparse.Namespace) -> int:
    from ..proto import federation_pb2 as pb
    from ..proto import federation_pb2_grpc as pb_grpc
    from ..proto.status_wire import iso_of

    conn = connection_of(args)
    models = [args.model] if args.model else federation_models(conn)
    if not args.model:
        print(f"models: {', '.join(models)}")
    stub = pb_grpc.ModelsStub(conn.channel())  # type: ignore[no-untyped-call]  # generated, untyped
    for model in models:
        with conn.plain_errors(f"versions {model}"):
            versions = list(stub.ListVersions(pb.ListVersionsRequest(model=model), timeout=30).versions)
        if not versions:
            print(f"no published versions of model {model!r} on {conn.address} (not a model of this federation, or "
                  "no round has finished yet; the name is [federation] model in the coordinator's config)")
            continue
        print(f"{'MODEL:VERSION':<32} {'ROUND':>5}  {'RULE':<14} {'PUBLISHED (UTC)':<20} {'EPSILON':>8}  TAGS")
        for v in versions:
            published = iso_of(v.published_at)[:19].replace("T", " ") if v.HasField("published_at") else "-"
            epsilon = f"{v.epsilon:.3g}" if v.HasField("epsilon") else "-"
            print(f"{model + ':' + v.version:<32} {v.round:>5}  {v.rule:<14} {published:<20} {epsilon:>8}  "
                  f"{', '.join(v.tags)}")
    return 0
