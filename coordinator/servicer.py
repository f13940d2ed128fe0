"""The sites' service (``Federation``): authorise, decode, call the domain, encode — a few lines per RPC.

Theory of operation
-------------------
Handlers (raw bytes in and out, ``rpc_handlers``) are coroutines on the server's event loop: a long poll awaits a wake-up from the round driver and an
upload awaits its next message, so neither holds a thread. The domain (``Orchestrator``, the model
store) stays synchronous and runs on a bounded thread pool for the short time each call takes. Before
any work, a call takes one of its peer's slots (``PeerLimits``); an upload also takes its site's only
upload slot, and its header is checked against the open round before a body byte is accepted.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator

import grpc

from ..proto import codec
from ..proto import federation_pb2 as pb
from ..proto import round_pb2 as rpb
from ..proto.reports import train_report_from_pb
from ..proto.round_spec import RoundSpec, encode_spec
from ..proto import tensors_pb2 as tpb
from .metrics import Direction
from .orchestrator import Orchestrator
from .peer_limits import PeerLimits
from .pki import Role
from .rpc_errors import refuse
from .site_input import hello_facts, train_metrics, unmask_metrics
from .steps import Assignment, SiteId, Step
from .wakeups import Wakeups, wait_for_change
from .rpc_handlers import Ctx, Edge, decode, guarded, unary, unary_stream

if TYPE_CHECKING:
    from .rpc_handlers import Handler


class SpecCache:
    """The wire form of the round's spec, encoded once per round rather than once per poll (one round at a time)."""

    def __init__(self) -> None:
        self._last: tuple[RoundSpec, rpb.RoundSpec] | None = None

    def __call__(self, spec: RoundSpec) -> rpb.RoundSpec:
        """``encode_spec(spec)``, reusing the last one for the same spec object."""
        if self._last is None or self._last[0] is not spec:
            self._last = (spec, encode_spec(spec))
        return self._last[1]


def _task(a: Assignment, specs: SpecCache) -> pb.Task:
    return pb.Task(step=a.step, kind=pb.StepKind.Value(a.kind.value),  # type: ignore[arg-type]  # int is a StepKind
                   round_id=a.round_id, phase=a.phase, spec=None if a.spec is None else specs(a.spec),
                   payload=a.payload, message=a.message)


_SECURE_SUM_STEPS = (Step.DECLARE_LAYOUT, Step.SECAGG_ADVERTISE, Step.SECAGG_SHARE, Step.SECAGG_MASKED,
                     Step.SECAGG_CONSISTENCY, Step.SECAGG_UNMASK)
"""Steps of a secure sum a site may refuse; all but MASKED (an Upload) are answered with a Submit."""


class FederationService:
    """The agents' service."""

    name = "fedquilt.v1.Federation"

    def __init__(self, edge: Edge, orch: Orchestrator, wakeups: Wakeups, *, max_upload_bytes: int, long_poll: float,
                 upload_idle: float, upload_total: float, crl_path: Path | None = None) -> None:
        self.edge, self.orch, self.wakeups = edge, orch, wakeups
        self.max_upload_bytes, self.long_poll = max_upload_bytes, long_poll
        self.upload_idle, self.upload_total = upload_idle, upload_total
        self.crl_path = crl_path
        """The CA-signed CRL served to sites (they verify its signature, so serving it grants no trust)."""
        self.specs = SpecCache()

    def handlers(self) -> dict[str, Handler]:
        """Method name -> handler."""
        e = self.edge
        return {"Hello": unary(e, "Hello", pb.HelloRequest, self.hello),
                "WaitForTask": unary(e, "WaitForTask", pb.WaitRequest, self.wait_for_task),
                "Download": unary_stream(e, "Download", pb.DownloadRequest, self.download),
                "Upload": grpc.stream_unary_rpc_method_handler(self.upload),
                "Submit": unary(e, "Submit", pb.SubmitRequest, self.submit)}

    def _site(self, context: Ctx) -> SiteId:
        return self.edge.check(context, Role.SITE)

    async def hello(self, request: pb.HelloRequest, context: Ctx) -> pb.HelloReply:
        """Enrol (validated facts only)."""
        site = self._site(context)
        shapes = {k: tuple(int(d) for d in v.dims) for k, v in request.target_shapes.items()}
        if any(len(s) != 2 for s in shapes.values()):
            raise codec.CodecError(f"target_shapes must name 2-D weights, got {dict(list(shapes.items())[:3])}")
        facts = hello_facts(num_samples=int(request.num_samples), rank=int(request.lora_rank),
                            alpha=float(request.lora_alpha), fingerprint=request.base_fingerprint,
                            task=request.task, shapes=shapes)
        last = await self.edge.run(self.orch.hello, site, facts.num_samples, facts.rank, facts.alpha,
                                   facts.fingerprint, facts.task, facts.shapes)
        fed = self.orch.fed
        return pb.HelloReply(site_id=site, federation=fed.name, base_fingerprint=fed.base_fingerprint,
                             rule=fed.rule, last_step=last, max_chunk_bytes=self.edge.chunk_bytes)

    async def wait_for_task(self, request: pb.WaitRequest, context: Ctx) -> pb.Task:
        """Long poll: a coroutine waiting for the driver's wake-up, not a thread."""
        site = self._site(context)
        if not request.wait_seconds >= 0:  # also catches NaN
            raise codec.CodecError(f"wait_seconds must be >= 0, got {request.wait_seconds}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(float(request.wait_seconds), self.long_poll)
        after = int(request.after_step)
        try:
            while True:
                changed = self.wakeups.current()
                found = await self.edge.run(self.orch.poll, site, after)
                if found is not None:
                    return _task(found, self.specs)
                left = deadline - loop.time()
                if left <= 0:
                    return _task(Assignment(step=after, kind=Step.IDLE), self.specs)
                await wait_for_change(changed, min(left, 1.0))  # at least a poll a second: the site's heartbeat
        except asyncio.CancelledError:
            self.orch.gone(site)  # the caller hung up (its process died): offline at once
            raise

    async def download(self, request: pb.DownloadRequest, context: Ctx) -> list[tpb.Chunk]:
        """The global state or a phase's broadcast, chunked."""
        site = self._site(context)
        if request.what == pb.DownloadRequest.GLOBAL:
            payload = await self.edge.run(self.orch.global_payload, site)
        elif request.what == pb.DownloadRequest.BROADCAST:
            payload = await self.edge.run(self.orch.broadcast_payload, site, request.round_id, int(request.phase))
        elif request.what == pb.DownloadRequest.CRL and self.crl_path is not None:
            payload = await self.edge.run(self.crl_path.read_bytes)
        else:
            raise codec.CodecError("Download.what must be GLOBAL, BROADCAST or CRL")
        self.edge.metrics.record_bytes(Direction.SENT, len(payload))
        return list(codec.chunks(payload, self.edge.chunk_bytes))

    async def upload(self, requests: AsyncIterator[bytes], context: Ctx) -> bytes:
        """Header checked against the open round first, then the body within deadlines, one stream per site."""
        async with guarded(self.edge, context, "Upload"):
            site = self._site(context)
            with self.edge.limits.upload(site):
                return (await self._upload(site, requests)).SerializeToString()
        raise AssertionError("unreachable: guarded ends the call")  # pragma: no cover

    async def _upload(self, site: SiteId, requests: AsyncIterator[bytes]) -> pb.Ack:
        loop = asyncio.get_running_loop()
        ends = loop.time() + self.upload_total
        stream = aiter(requests)

        async def next_message() -> pb.UploadChunk | None:
            wait = min(self.upload_idle, ends - loop.time())
            try:
                raw = await asyncio.wait_for(anext(stream), max(wait, 0.0))
            except StopAsyncIteration:
                return None
            return decode(pb.UploadChunk, raw)

        upload = codec.UploadAssembler(self.max_upload_bytes)
        header = upload.header(await next_message())
        encoding = tpb.Encoding.Name(header.encoding)
        size = await self.edge.run(self.orch.upload_size, site, header.round_id, int(header.step), int(header.phase),
                                   encoding)
        if size is not None:
            upload.expect(size)
        layout = codec.layout_from_pb(header.layout)
        while (msg := await next_message()) is not None:
            upload.add(msg)
        payload = upload.finish()
        self.edge.metrics.record_bytes(Direction.RECEIVED, len(payload))
        added = await self.edge.run(self.orch.upload, site, header.round_id, int(header.step), int(header.phase),
                                    encoding, layout, payload)
        return pb.Ack(accepted=True, message="accepted" if added else "already received (identical retry)")

    async def submit(self, request: pb.SubmitRequest, context: Ctx) -> pb.Ack:
        """A small step reply (its report validated against its bounds)."""
        site = self._site(context)
        kind = Step(pb.StepKind.Name(request.kind)) if request.kind else None
        report = request.WhichOneof("report")
        if report is not None and (kind, report) not in ((Step.TRAIN, "train"), (Step.SECAGG_UNMASK, "unmask")):
            raise codec.CodecError(f"Submit of kind {pb.StepKind.Name(request.kind)} does not take a {report} report")
        if kind is Step.TRAIN:
            metrics = train_metrics(train_report_from_pb(request.train))
            await self.edge.run(self.orch.trained, site, request.round_id, int(request.step), metrics)
        elif request.refusal and kind in _SECURE_SUM_STEPS:
            await self.edge.run(self.orch.secagg_refusal, site, request.round_id, int(request.step), kind,
                                request.refusal)
            return pb.Ack(accepted=True, message="refusal recorded")
        elif kind in _SECURE_SUM_STEPS and kind is not Step.SECAGG_MASKED:
            clipped = unmask_metrics(int(request.unmask.clipped)) if kind is Step.SECAGG_UNMASK else 0
            await self.edge.run(self.orch.secagg_message, site, request.round_id, int(request.step), kind,
                                request.payload)
            if clipped:
                self.edge.metrics.record_clipped(clipped)
        else:
            raise codec.CodecError(f"Submit does not take kind {pb.StepKind.Name(request.kind)}")
        return pb.Ack(accepted=True, message="accepted")
