"""The agent's side of a secure sum: coordinator steps in, ``secure_agg.ClientSession`` replies out.

Per phase: ``DECLARE_LAYOUT`` computes the phase's vectors (to learn their names and shapes),
``SECAGG_ADVERTISE`` opens a fresh ``ClientSession`` (fresh keys and self-mask seed for every sum),
``SECAGG_SHARE`` verifies every peer's signed advertisement and recomputes the vectors bound to the
session id (sketch matrices are derived from it), ``SECAGG_MASKED`` uploads the masked ring vector,
``SECAGG_CONSISTENCY`` signs the survivor set shown, ``SECAGG_UNMASK`` reveals shares only after
the client's own checks (>= floor valid signatures on that same set). From the second phase on the
pairwise masks are bound to H(broadcast), so a coordinator that sends different broadcasts to
different sites gets noise, not a sum.

The site's ``[privacy]`` policy (``secure_agg.ClientPolicy``, raised to the round spec's
``min_contributors``) is checked by the client session at every stage; from phase 1 on, the
session also requires exactly the survivors this site signed in phase 0 (a site that dropped in
between would otherwise let the coordinator compute its own sketch). A refused stage is logged
once and reported with ``Submit.refusal``; nothing more is sent for that sum. Before advertising
keys the site refreshes the CA-signed CRL (``Download(CRL)``) and keeps the newest valid one.
"""

from __future__ import annotations

import dataclasses
import os
import logging

import grpc
import numpy as np
from cryptography import x509

from .. import secagg_wire
from .. import secure_agg as sa
from ..proto import codec
from ..proto import federation_pb2 as pb
from ..proto import tensors_pb2 as tpb
from ..strategies import cohort_metrics
from ..strategies.base import N_KEY, RoundContext
from .site_noise import clip_and_noise_update
from .site_port import PhaseWork, SecureSumHost

log = logging.getLogger("fedquilt.agent.secagg")


class SecureSumClient:
    """Handles every ``SECAGG_*`` / ``DECLARE_LAYOUT`` step for one site."""

    def __init__(self, ca_pem: bytes, cert_pem: bytes, key_pem: bytes, policy: sa.ClientPolicy | None = None) -> None:
        self.ca_pem, self.cert_pem = ca_pem, cert_pem
        self.key = sa.load_signing_key(key_pem)
        self.policy = policy or sa.ClientPolicy()
        """This site's ``[privacy]`` floor; only ever raised by a round spec."""
        self.revocations: sa.RevocationSet | None = None
        """The newest CA-signed CRL this site has seen."""
        self._ca_cert = x509.load_pem_x509_certificate(ca_pem)
        self._first_phase: tuple[str, frozenset[sa.SiteId]] | None = None
        """(round id, the survivor set this site signed in phase 0): phase k > 0 must have exactly these."""
        self.session: sa.ClientSession | None = None
        self._phase_key: tuple[str, int] | None = None
        self._cached: tuple[tuple[str, int, bytes], dict[str, np.ndarray]] | None = None
        # Site-level DP noise: numpy's PCG64 seeded from the OS CSPRNG (the mask generator is AES-CTR, not this).
        self._noise_rng = np.random.Generator(np.random.PCG64(int.from_bytes(os.urandom(16), "big")))

    def __call__(self, loop: SecureSumHost, work: PhaseWork, task: pb.Task) -> None:
        """Do one step of the current round's secure sum; a step below this site's policy is refused."""
        try:
            self._step(loop, work, task)
        except sa.SecAggError as exc:
            self.session = None
            log.error("round %s phase %d: refusing %s: %s", task.round_id, task.phase, pb.StepKind.Name(task.kind), exc)
            loop.transport.submit(pb.SubmitRequest(round_id=task.round_id, step=task.step, kind=task.kind,
                                                   refusal=f"{type(exc).__name__}: {exc}"[:500]))

    def _policy(self, work: PhaseWork, task: pb.Task) -> sa.ClientPolicy:
        """This site's policy raised to the federation's minimum; phase k > 0 requires phase 0's survivors."""
        secagg = work.spec.secagg or {}
        policy = self.policy.at_least(int(secagg.get("min_contributors", 0) or 0))
        if task.phase > 0:
            if self._first_phase is None or self._first_phase[0] != task.round_id:
                raise sa.PolicyRefusal(f"phase {task.phase} of round {task.round_id}: this site holds no first-phase "
                                       "survivor set to check the participants against")
            policy = dataclasses.replace(policy, required_members=self._first_phase[1])
        return policy

    def _refresh_crl(self, loop: SecureSumHost) -> None:
        try:
            fetched = sa.load_crl(loop.transport.download(pb.DownloadRequest.CRL), self._ca_cert)
        except grpc.RpcError as exc:
            log.warning("could not fetch the CRL (%s); keeping the one held", exc.code().name)
            return
        except sa.InvalidSignature as exc:
            log.error("the coordinator served a CRL this site rejects (%s); keeping the one held", exc)
            return
        if fetched.newer_than(self.revocations):
            self.revocations = fetched

    def _step(self, loop: SecureSumHost, work: PhaseWork, task: pb.Task) -> None:
        kind = task.kind
        if kind == pb.DECLARE_LAYOUT:
            vectors = self._vectors(loop, work, task.phase, work.ctx)
            loop.transport.submit(pb.SubmitRequest(round_id=task.round_id, step=task.step, kind=kind,
                                                   payload=codec.encode_layout(codec.layout_of(vectors))))
        elif kind == pb.SECAGG_ADVERTISE:
            self._phase_key = (task.round_id, task.phase)
            context = b""
            if task.phase > 0:
                context = work.broadcast_digests[task.phase]
            policy = self._policy(work, task)
            self._refresh_crl(loop)
            self.session = sa.ClientSession(sa.SiteId(loop.site), self.key, self.cert_pem, self.ca_pem,
                                            mask_context=context, policy=policy, revocations=self.revocations)
            reply = self._session(task).handle(secagg_wire.decode_secagg("Announce", task.payload))
            self._submit(loop, task, reply)
        elif kind == pb.SECAGG_SHARE:
            session = self._session(task)
            reply = session.handle(secagg_wire.decode_secagg("AdvertisementsRelay", task.payload))
            assert session.session_id is not None
            bound = dataclasses.replace(work.ctx, session=session.session_id)
            vectors = self._vectors(loop, work, task.phase, bound, session.params.clip if session.params else None)
            loop.audit(task.round_id, task.phase, vectors)
            session.set_input(vectors)
            self._submit(loop, task, reply)
        elif kind == pb.SECAGG_MASKED:
            session = self._session(task)
            masked = session.handle(secagg_wire.decode_secagg("SharesRelay", task.payload))
            assert isinstance(masked, sa.MaskedInput), "a SharesRelay is always answered with a MaskedInput"
            encoding = tpb.RING_U32 if masked.vector.dtype == np.uint32 else tpb.RING_U64
            loop.transport.upload(task.round_id, task.step, task.phase, encoding,
                                  codec.encode_masked(masked.session_id, masked.vector))
            if session.clipped:
                log.warning("round %s phase %d: %d values were clipped to the declared range", task.round_id,
                            task.phase, session.clipped)
        elif kind == pb.SECAGG_CONSISTENCY:
            session = self._session(task)
            reply = session.handle(secagg_wire.decode_secagg("ConsistencyRequest", task.payload))
            if task.phase == 0 and session.survivors is not None:
                self._first_phase = (task.round_id, session.survivors)
            self._submit(loop, task, reply)
        elif kind == pb.SECAGG_UNMASK:
            session = self._session(task)
            reply = session.handle(secagg_wire.decode_secagg("UnmaskRequest", task.payload))
            # Nothing beside the shares: this site's clipped count travelled inside the first secure sum.
            self._submit(loop, task, reply)

    def _session(self, task: pb.Task) -> sa.ClientSession:
        if self.session is None or self._phase_key != (task.round_id, task.phase):
            raise RuntimeError(f"no secure sum open for round {task.round_id} phase {task.phase}")
        return self.session

    def _submit(self, loop: SecureSumHost, task: pb.Task, reply: object) -> None:
        loop.transport.submit(pb.SubmitRequest(round_id=task.round_id, step=task.step, kind=task.kind,
                                               payload=secagg_wire.encode_secagg(reply)))

    def _vectors(self, loop: SecureSumHost, work: PhaseWork, phase: int, ctx: RoundContext,
                 clip: float | None = None) -> dict[str, np.ndarray]:
        """The phase's vectors divided by the round's public weight scale (keeps them inside the clip range),
        clipped and noised for site-level DP when the federation asks for it (computed once per phase); phase 0
        also carries this site's metrics (``strategies/cohort_metrics.py``), so none travels in the clear."""
        key = (work.spec.round_id, phase, ctx.session)
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        secagg = work.spec.secagg or {}
        scale = float(secagg.get("weight_scale", 1.0)) or 1.0
        vectors = {k: np.asarray(v, np.float64) / scale for k, v in loop.phase_vectors(work, phase, ctx).items()}
        noise = secagg.get("site_noise")
        if noise:
            counts = vectors.pop(N_KEY)
            vectors, clipped = clip_and_noise_update(vectors, float(noise["clip"]), float(noise["sigma"]),
                                                     int(noise["sites"]), self._noise_rng)
            vectors[N_KEY] = counts
            if clipped:
                log.info("round %s phase %d: update clipped to L2 norm %s for site-level DP", work.spec.round_id,
                         phase, noise["clip"])
        if phase == 0:
            over = 0 if clip is None else sum(int(np.count_nonzero(np.abs(v) > clip)) for v in vectors.values())
            dp = loop.privacy is not None or bool(noise)
            reported = {k: v for k, v in work.metrics.items()
                        if k in cohort_metrics.NAMES and not (dp and k in cohort_metrics.TRAINING_NAMES)}
            vectors.update(cohort_metrics.pack(reported, float(work.n), scale, clipped=over, clip=clip or 1.0))
        self._cached = (key, vectors)
        return vectors
