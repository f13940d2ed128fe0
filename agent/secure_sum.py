"""The site's side of a secure sum, sans I/O: a coordinator step in, the actions that answer it out.

Theory of operation
-------------------
``SecureSumClient`` is owned by the site machine (``agent/site_machine.py``), which hands it every
``DECLARE_LAYOUT`` / ``SECAGG_*`` step of the round it holds; the machine's driver performs what comes back.
Per phase: ``DECLARE_LAYOUT`` computes the phase's vectors (to learn their names and shapes),
``SECAGG_ADVERTISE`` opens a fresh ``secure_agg.ClientSession`` (fresh keys and self-mask seed for every
sum), ``SECAGG_SHARE`` verifies every peer's signed advertisement and recomputes the vectors bound to the
session id (sketch matrices are derived from it), ``SECAGG_MASKED`` uploads the masked ring vector,
``SECAGG_CONSISTENCY`` signs the survivor set shown, ``SECAGG_UNMASK`` reveals shares only after the
client's own checks (>= floor valid signatures on that same set). From the second phase on the pairwise
masks are bound to H(broadcast), so a coordinator that sends different broadcasts to different sites gets
noise, not a sum.

The checks, each in one place: the site's ``[privacy]`` policy, raised to the round spec's
``min_contributors`` but never lowered (``_policy``), is checked by the client session at every stage;
from phase 1 on, the session also requires exactly the survivors this site signed in phase 0
(``_first_phase``: a site that dropped in between would otherwise let the coordinator compute its own
sketch). A refused stage is logged once and answered with ``Submit(refusal=...)``; nothing more is sent
for that sum. Before advertising keys the client asks for the CA-signed CRL (``Fetch(CRL)``, answered
with ``on_crl``) and keeps the newest valid one; a CRL it cannot fetch or verify leaves the one held.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable

import numpy as np
from cryptography import x509

from .. import secagg_wire
from .. import secure_agg as sa
from ..proto import codec
from ..proto import federation_pb2 as pb
from ..proto import tensors_pb2 as tpb
from .site_actions import Audit, Fetch, Fetched, FetchKind, SiteAction, SiteStep, Submit, UploadMasked
from ..strategies import cohort_metrics
from ..strategies.base import N_KEY, RoundContext
from .site_noise import clip_and_noise_update
from .site_port import PhaseWork

log = logging.getLogger("fedquilt.agent.secagg")


@dataclasses.dataclass(frozen=True)
class _Advertising:
    """A ``SECAGG_ADVERTISE`` waiting for its CRL."""

    site: sa.SiteId
    step: SiteStep
    policy: sa.ClientPolicy
    context: bytes


class SecureSumClient:
    """Answers every ``SECAGG_*`` / ``DECLARE_LAYOUT`` step for one site (its identity key, policy and CRL)."""

    def __init__(self, ca_pem: bytes, cert_pem: bytes, key_pem: bytes, policy: sa.ClientPolicy | None = None,
                 noise_rng: np.random.Generator | None = None) -> None:
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
        self._advertising: _Advertising | None = None
        # Site-level DP noise: numpy's PCG64 seeded from the OS CSPRNG (the mask generator is AES-CTR, not this).
        self.vectors = SumVectors(noise_rng or np.random.Generator(np.random.PCG64(int.from_bytes(os.urandom(16), "big"))))

    # ---- events -------------------------------------------------------------------------------

    def on_step(self, site: sa.SiteId, work: PhaseWork, step: SiteStep) -> list[SiteAction]:
        """The actions answering one step of the current round's secure sum (a refusal below this site's policy)."""
        return self._refusing(step, lambda: self._step(site, work, step))

    def on_crl(self, fetched: Fetched) -> list[SiteAction]:
        """The CRL asked for by ``SECAGG_ADVERTISE`` (or why it could not be fetched): advertise keys."""
        pending, self._advertising = self._advertising, None
        if pending is None:
            raise RuntimeError("a CRL arrived but no key advertisement was waiting for one")
        self._take_crl(fetched)
        return self._refusing(pending.step, lambda: self._advertise(pending))

    # ---- the steps ----------------------------------------------------------------------------

    def _refusing(self, step: SiteStep, answer: Callable[[], list[SiteAction]]) -> list[SiteAction]:
        try:
            return answer()
        except sa.SecAggError as exc:
            self.session = None
            log.error("round %s phase %d: refusing %s: %s", step.round_id, step.phase, step.name, exc)
            return [Submit(step.round_id, step.step, step.kind, refusal=f"{type(exc).__name__}: {exc}"[:500])]

    def _step(self, site: sa.SiteId, work: PhaseWork, step: SiteStep) -> list[SiteAction]:
        kind = step.kind
        if kind == pb.DECLARE_LAYOUT:
            vectors = self.vectors.of(work, step.phase, work.ctx)
            return [self._reply(step, codec.encode_layout(codec.layout_of(vectors)))]
        if kind == pb.SECAGG_ADVERTISE:
            self._phase_key = (step.round_id, step.phase)
            context = work.broadcast_digests[step.phase] if step.phase > 0 else b""
            self._advertising = _Advertising(site, step, self._policy(work, step), context)
            return [Fetch(FetchKind.CRL)]
        session = self._session(step)
        if kind == pb.SECAGG_SHARE:
            reply = session.handle(secagg_wire.decode_secagg("AdvertisementsRelay", step.payload))
            assert session.session_id is not None
            bound = dataclasses.replace(work.ctx, session=session.session_id)
            vectors = self.vectors.of(work, step.phase, bound, session.params.clip if session.params else None)
            session.set_input(vectors)
            return [Audit(step.round_id, step.phase, vectors), self._reply(step, secagg_wire.encode_secagg(reply))]
        if kind == pb.SECAGG_MASKED:
            masked = session.handle(secagg_wire.decode_secagg("SharesRelay", step.payload))
            assert isinstance(masked, sa.MaskedInput), "a SharesRelay is always answered with a MaskedInput"
            encoding = tpb.RING_U32 if masked.vector.dtype == np.uint32 else tpb.RING_U64
            if session.clipped:
                log.warning("round %s phase %d: %d values were clipped to the declared range", step.round_id,
                            step.phase, session.clipped)
            return [UploadMasked(step.round_id, step.step, step.phase, encoding,
                                 codec.encode_masked(masked.session_id, masked.vector))]
        if kind == pb.SECAGG_CONSISTENCY:
            reply = session.handle(secagg_wire.decode_secagg("ConsistencyRequest", step.payload))
            if step.phase == 0 and session.survivors is not None:
                self._first_phase = (step.round_id, session.survivors)
            return [self._reply(step, secagg_wire.encode_secagg(reply))]
        if kind == pb.SECAGG_UNMASK:
            reply = session.handle(secagg_wire.decode_secagg("UnmaskRequest", step.payload))
            # Nothing beside the shares: this site's clipped count travelled inside the first secure sum.
            return [self._reply(step, secagg_wire.encode_secagg(reply))]
        raise RuntimeError(f"{step.name} is not a secure-sum step")

    def _advertise(self, pending: _Advertising) -> list[SiteAction]:
        self.session = sa.ClientSession(pending.site, self.key, self.cert_pem, self.ca_pem,
                                        mask_context=pending.context, policy=pending.policy,
                                        revocations=self.revocations)
        reply = self._session(pending.step).handle(secagg_wire.decode_secagg("Announce", pending.step.payload))
        return [self._reply(pending.step, secagg_wire.encode_secagg(reply))]

    # ---- the checks ---------------------------------------------------------------------------

    def _policy(self, work: PhaseWork, step: SiteStep) -> sa.ClientPolicy:
        """This site's policy raised to the federation's minimum; phase k > 0 requires phase 0's survivors."""
        secagg = work.spec.secagg or {}
        policy = self.policy.at_least(int(secagg.get("min_contributors", 0) or 0))
        if step.phase > 0:
            if self._first_phase is None or self._first_phase[0] != step.round_id:
                raise sa.PolicyRefusal(f"phase {step.phase} of round {step.round_id}: this site holds no first-phase "
                                       "survivor set to check the participants against")
            policy = dataclasses.replace(policy, required_members=self._first_phase[1])
        return policy

    def _take_crl(self, fetched: Fetched) -> None:
        if fetched.data is None:
            log.warning("could not fetch the CRL (%s); keeping the one held", fetched.failure)
            return
        try:
            crl = sa.load_crl(fetched.data, self._ca_cert)
        except sa.InvalidSignature as exc:
            log.error("the coordinator served a CRL this site rejects (%s); keeping the one held", exc)
            return
        if crl.newer_than(self.revocations):
            self.revocations = crl

    def _session(self, step: SiteStep) -> sa.ClientSession:
        if self.session is None or self._phase_key != (step.round_id, step.phase):
            raise RuntimeError(f"no secure sum open for round {step.round_id} phase {step.phase}")
        return self.session

    def _reply(self, step: SiteStep, payload: bytes) -> Submit:
        return Submit(step.round_id, step.step, step.kind, payload=payload)


class SumVectors:
    """A phase's secure-sum input, computed once per (round, phase, session)."""

    def __init__(self, noise_rng: np.random.Generator) -> None:
        self.noise_rng = noise_rng
        self._cached: tuple[tuple[str, int, bytes], dict[str, np.ndarray]] | None = None

    def of(self, work: PhaseWork, phase: int, ctx: RoundContext, clip: float | None = None) -> dict[str, np.ndarray]:
        """The phase's vectors divided by the round's public weight scale (keeps them inside the clip range),
        clipped and noised for site-level DP when the federation asks for it; phase 0 also carries this site's
        metrics (``strategies/cohort_metrics.py``), so none travels in the clear."""
        key = (work.spec.round_id, phase, ctx.session)
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        secagg = work.spec.secagg or {}
        scale = float(secagg.get("weight_scale", 1.0)) or 1.0
        vectors = {k: np.asarray(v, np.float64) / scale for k, v in work.vectors(phase, ctx).items()}
        noise = secagg.get("site_noise")
        if noise:
            counts = vectors.pop(N_KEY)
            vectors, clipped = clip_and_noise_update(vectors, float(noise["clip"]), float(noise["sigma"]),
                                                     int(noise["sites"]), self.noise_rng)
            vectors[N_KEY] = counts
            if clipped:
                log.info("round %s phase %d: update clipped to L2 norm %s for site-level DP", work.spec.round_id,
                         phase, noise["clip"])
        if phase == 0:
            over = 0 if clip is None else sum(int(np.count_nonzero(np.abs(v) > clip)) for v in vectors.values())
            dp = work.dp or bool(noise)
            reported = {k: _number(v) for k, v in work.metrics.items()
                        if k in cohort_metrics.NAMES and not (dp and k in cohort_metrics.TRAINING_NAMES)}
            vectors.update(cohort_metrics.pack(reported, float(work.n), scale, clipped=over, clip=clip or 1.0))
        self._cached = (key, vectors)
        return vectors


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None
