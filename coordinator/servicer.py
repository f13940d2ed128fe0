"""gRPC servicers: authorise, decode, call the domain, encode — a few lines per RPC."""

from __future__ import annotations

import json
from typing import Any, Iterable, Iterator, Mapping, Sequence, cast

import grpc

from ..proto import codec
from ..proto import federation_pb2 as pb
from ..proto import federation_pb2_grpc as pb_grpc
from ..proto import tensors_pb2 as tpb
from .identity import Authorizer
from .metrics import Direction, Metrics
from .orchestrator import Orchestrator
from .pki import Role
from .registry import FileModelStore
from .rpc_errors import translated
from .site_input import hello_facts, train_metrics, unmask_metrics
from .steps import Assignment, SiteId, Step

_ANY_ROLE = {Role.SITE, Role.ADMIN, Role.COORDINATOR}


def _auth(context: grpc.ServicerContext) -> Mapping[str, Sequence[bytes]]:
    # grpc gives every auth property as a list of bytes; types-grpcio declares a single bytes value.
    return cast("Mapping[str, Sequence[bytes]]", context.auth_context())


def _task(a: Assignment) -> pb.Task:
    return pb.Task(step=a.step, kind=pb.StepKind.Value(a.kind.value),  # type: ignore[arg-type]  # int is a StepKind
                   round_id=a.round_id, phase=a.phase,
                   spec_json=a.spec_json, payload=a.payload, message=a.message)


class FederationServicer(pb_grpc.FederationServicer):
    """The agents' service."""

    def __init__(self, orch: Orchestrator, authz: Authorizer, max_upload_bytes: int, long_poll: float,
                 metrics: Metrics, chunk_bytes: int = codec.CHUNK_BYTES) -> None:
        self.orch, self.authz, self.metrics = orch, authz, metrics
        self.chunk_bytes = chunk_bytes
        self.max_upload_bytes, self.long_poll = max_upload_bytes, long_poll

    def _site(self, context: grpc.ServicerContext) -> SiteId:
        return SiteId(self.authz.check(_auth(context), Role.SITE).site_id)

    def Hello(self, request: pb.HelloRequest, context: grpc.ServicerContext) -> pb.HelloReply:
        with translated(context, "Hello", self.metrics):
            site = self._site(context)
            shapes = {k: tuple(int(d) for d in v.dims) for k, v in request.target_shapes.items()}
            if any(len(s) != 2 for s in shapes.values()):
                raise codec.CodecError(f"target_shapes must name 2-D weights, got {dict(list(shapes.items())[:3])}")
            facts = hello_facts(num_samples=int(request.num_samples), rank=int(request.lora_rank),
                                alpha=float(request.lora_alpha), fingerprint=request.base_fingerprint,
                                task=request.task, shapes=shapes)
            last = self.orch.hello(site, facts.num_samples, facts.rank, facts.alpha, facts.fingerprint, facts.task,
                                   facts.shapes)
            return pb.HelloReply(site_id=site, federation=self.orch.fed.name, base_fingerprint=self.orch.fed.base_fingerprint,
                                 rule=self.orch.fed.rule, last_step=last, max_chunk_bytes=self.chunk_bytes)

    def WaitForTask(self, request: pb.WaitRequest, context: grpc.ServicerContext) -> pb.Task:
        with translated(context, "WaitForTask", self.metrics):
            site = self._site(context)
            if not request.wait_seconds >= 0:  # also catches NaN, which would make the wait spin
                raise codec.CodecError(f"wait_seconds must be >= 0, got {request.wait_seconds}")
            wait = min(float(request.wait_seconds), self.long_poll)
            return _task(self.orch.wait(site, int(request.after_step), wait))

    def Download(self, request: pb.DownloadRequest, context: grpc.ServicerContext) -> Iterator[tpb.Chunk]:
        with translated(context, "Download", self.metrics):
            site = self._site(context)
            if request.what == pb.DownloadRequest.GLOBAL:
                payload = self.orch.global_payload(site)
            elif request.what == pb.DownloadRequest.BROADCAST:
                payload = self.orch.broadcast_payload(site, request.round_id, int(request.phase))
            else:
                raise codec.CodecError("Download.what must be GLOBAL or BROADCAST")
        self.metrics.record_bytes(Direction.SENT, len(payload))
        yield from codec.chunks(payload, self.chunk_bytes)

    def Upload(self, request_iterator: Iterable[pb.UploadChunk], context: grpc.ServicerContext) -> pb.Ack:
        with translated(context, "Upload", self.metrics):
            site = self._site(context)
            header, payload = codec.read_upload(request_iterator, self.max_upload_bytes)
            self.metrics.record_bytes(Direction.RECEIVED, len(payload))
            added = self.orch.upload(site, header.round_id, int(header.step), int(header.phase),
                                     tpb.Encoding.Name(header.encoding), codec.layout_from_pb(header.layout), payload)
            return pb.Ack(accepted=True, message="accepted" if added else "already received (identical retry)")

    def Submit(self, request: pb.SubmitRequest, context: grpc.ServicerContext) -> pb.Ack:
        with translated(context, "Submit", self.metrics):
            site = self._site(context)
            kind = Step(pb.StepKind.Name(request.kind)) if request.kind else None
            if kind is Step.TRAIN:
                metrics = train_metrics(request.metrics_json)
                self.orch.trained(site, request.round_id, int(request.step), metrics)
            elif kind in (Step.DECLARE_LAYOUT, Step.SECAGG_ADVERTISE, Step.SECAGG_SHARE, Step.SECAGG_UNMASK):
                clipped = unmask_metrics(request.metrics_json) if kind is Step.SECAGG_UNMASK else 0
                self.orch.secagg_message(site, request.round_id, int(request.step), kind, request.payload)
                if clipped:
                    self.metrics.record_clipped(clipped)
            else:
                raise codec.CodecError(f"Submit does not take kind {pb.StepKind.Name(request.kind)}")
            return pb.Ack(accepted=True, message="accepted")


class ModelsServicer(pb_grpc.ModelsServicer):
    """Consumers pull published versions."""

    def __init__(self, store: FileModelStore, authz: Authorizer, metrics: Metrics,
                 chunk_bytes: int = codec.CHUNK_BYTES) -> None:
        self.store, self.authz, self.metrics = store, authz, metrics
        self.chunk_bytes = chunk_bytes

    def ListVersions(self, request: pb.ListVersionsRequest, context: grpc.ServicerContext) -> pb.VersionList:
        with translated(context, "ListVersions", self.metrics):
            self.authz.check(_auth(context), _ANY_ROLE)
            out = []
            for version in self.store.versions(request.model):
                m = self.store.manifest(request.model, version)
                out.append(pb.VersionInfo(model=request.model, version=version, round=int(m.get("round", 0)),
                                          rule=str(m.get("rule", "")), created=str(m.get("created", "")),
                                          tags=self.store.tags_of(request.model, version)))
            return pb.VersionList(versions=out)

    def Pull(self, request: pb.PullRequest, context: grpc.ServicerContext) -> Iterator[pb.FileChunk]:
        with translated(context, "Pull", self.metrics):
            self.authz.check(_auth(context), _ANY_ROLE)
            version = self.store.resolve(request.model, request.version or "latest")
            manifest = self.store.manifest(request.model, version)
            files = {"manifest.json": json.dumps(manifest, indent=2, sort_keys=True).encode()}
            for name in sorted(manifest["files"]):
                files[name] = self.store.read(request.model, version, name)
        for name, body in files.items():
            for chunk in codec.chunks(body, self.chunk_bytes):
                yield pb.FileChunk(path=name, data=chunk.data, offset=chunk.offset, file_size=chunk.total_size,
                                   sha256=chunk.sha256, version=version)


class AdminServicer(pb_grpc.AdminServicer):
    """Operator RPCs (admin certificates only)."""

    def __init__(self, orch: Orchestrator, authz: Authorizer, metrics: Metrics) -> None:
        self.orch, self.authz, self.metrics = orch, authz, metrics

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusReply:
        with translated(context, "Status", self.metrics):
            self.authz.check(_auth(context), Role.ADMIN)
            return pb.StatusReply(json=json.dumps(self.orch.status()))

    def ListSites(self, request: pb.ListSitesRequest, context: grpc.ServicerContext) -> pb.SiteList:
        with translated(context, "ListSites", self.metrics):
            self.authz.check(_auth(context), Role.ADMIN)
            sites = self.orch.status()["sites"]
            return pb.SiteList(sites=[pb.SiteInfo(site_id=s["site"], online=s["online"], num_samples=s["num_samples"],
                                                  lora_rank=s["rank"], last_seen=f"{s['last_seen_seconds_ago']}s ago")
                                      for s in sites])

    def SetFederationState(self, request: pb.FederationStateRequest, context: grpc.ServicerContext) -> pb.StatusReply:
        with translated(context, "SetFederationState", self.metrics):
            self.authz.check(_auth(context), Role.ADMIN)
            self.orch.set_running(bool(request.running))
            return pb.StatusReply(json=json.dumps(self.orch.status()))
