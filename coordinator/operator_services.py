"""The consumers' and operators' services: ``Models`` (list and pull published versions) and ``Admin``.

Each RPC authorises the caller's role, validates names, runs the short domain call on the pool and
encodes the reply (see ``rpc_handlers``).
"""

from __future__ import annotations

import time
import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable


from ..proto import codec, status_wire
from ..proto import federation_pb2 as pb
from .manifest import max_epsilon
from .metrics import Direction
from .orchestrator import Orchestrator
from .pki import Role
from .registry import FileModelStore, validate_name
from .wakeups import Wakeups
from .rpc_handlers import Ctx, Edge, unary, unary_stream

if TYPE_CHECKING:
    from .rpc_handlers import Handler


class ModelsService:
    """Consumers pull published versions (the roles allowed are the operator's setting)."""

    name = "fedquilt.v1.Models"

    def __init__(self, edge: Edge, store: FileModelStore, pull_roles: set[Role], crl_path: Path | None = None) -> None:
        self.edge, self.store, self.pull_roles = edge, store, set(pull_roles)
        self.crl_path = crl_path
        """Streamed as ``crl.pem`` after a version's files: the consumer checks the manifest signer against it."""

    def handlers(self) -> dict[str, Handler]:
        """Method name -> handler."""
        return {"ListVersions": unary(self.edge, "ListVersions", pb.ListVersionsRequest, self.list_versions),
                "Pull": unary_stream(self.edge, "Pull", pb.PullRequest, self.pull)}

    async def list_versions(self, request: pb.ListVersionsRequest, context: Ctx) -> pb.VersionList:
        """Every published version of a model."""
        self.edge.check(context, self.pull_roles)
        return await self.edge.run(self._list, validate_name("model", request.model))

    def _list(self, model: str) -> pb.VersionList:
        out = []
        for version in self.store.versions(model):
            m = self.store.manifest(model, version)
            out.append(pb.VersionInfo(model=model, version=version, round=int(m.get("round", 0)),
                                      rule=str(m.get("rule", "")), round_id=str(m.get("round_id") or ""),
                                      published_at=status_wire.timestamp_of_iso(m.get("created")),
                                      epsilon=max_epsilon(m), tags=self.store.tags_of(model, version)))
        return pb.VersionList(versions=out)

    async def pull(self, request: pb.PullRequest, context: Ctx) -> list[pb.FileChunk]:
        """A version's files and its signed manifest, chunked."""
        self.edge.check(context, self.pull_roles)
        return await self.edge.run(self._pull, validate_name("model", request.model), request.version or "latest")

    def _pull(self, model: str, ref: str) -> list[pb.FileChunk]:
        version = self.store.resolve(model, ref)
        manifest = self.store.manifest(model, version)
        files = {"manifest.json": json.dumps(manifest, indent=2, sort_keys=True).encode()}
        for name in sorted(manifest["files"]):
            files[name] = self.store.read(model, version, name)
        if self.crl_path is not None and self.crl_path.exists() and "crl.pem" not in files:
            files["crl.pem"] = self.crl_path.read_bytes()
        self.edge.metrics.record_bytes(Direction.SENT, sum(len(body) for body in files.values()))
        return [pb.FileChunk(path=name, data=chunk.data, offset=chunk.offset, file_size=chunk.total_size,
                             sha256=chunk.sha256, version=version)
                for name, body in files.items() for chunk in codec.chunks(body, self.edge.chunk_bytes)]


class AdminService:
    """Operator RPCs (admin certificates only)."""

    name = "fedquilt.v1.Admin"

    def __init__(self, edge: Edge, orch: Orchestrator, wakeups: Wakeups,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.edge, self.orch, self.wakeups = edge, orch, wakeups
        self.wall_clock = wall_clock
        """Turns the orchestrator's "seconds ago" into the Timestamps of the replies."""

    async def _status(self) -> pb.StatusReply:
        snapshot = await self.edge.run(self.orch.status)
        return pb.StatusReply(status=status_wire.status_to_pb(snapshot, self.wall_clock()))

    def handlers(self) -> dict[str, Handler]:
        """Method name -> handler."""
        e = self.edge
        return {"Status": unary(e, "Status", pb.StatusRequest, self.status),
                "ListSites": unary(e, "ListSites", pb.ListSitesRequest, self.list_sites),
                "SetFederationState": unary(e, "SetFederationState", pb.FederationStateRequest, self.set_state)}

    async def status(self, request: pb.StatusRequest, context: Ctx) -> pb.StatusReply:
        """The status snapshot."""
        self.edge.check(context, Role.ADMIN)
        return await self._status()

    async def list_sites(self, request: pb.ListSitesRequest, context: Ctx) -> pb.SiteList:
        """Every known site."""
        self.edge.check(context, Role.ADMIN)
        sites = (await self.edge.run(self.orch.status))["sites"]
        now = self.wall_clock()
        return pb.SiteList(sites=[status_wire.site_info(s, now) for s in sites])

    async def set_state(self, request: pb.FederationStateRequest, context: Ctx) -> pb.StatusReply:
        """Start or pause the federation."""
        self.edge.check(context, Role.ADMIN)
        await self.edge.run(self.orch.set_running, bool(request.running))
        self.wakeups.changed(force=True)
        return await self._status()
