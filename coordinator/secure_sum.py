"""One phase's secure sum, driven over gRPC steps: the coordinator's adapter to ``secure_agg``.

Stages, each closed when every expected site has answered or at its deadline (whoever is left
goes on; fewer than t ends the round with ``ThresholdNotMet``)::

    DECLARE_LAYOUT  sites compute the phase's vectors and declare names + shapes (must agree)
    ADVERTISE       Announce -> signed key advertisements
    SHARE           AdvertisementsRelay -> encrypted Shamir shares
    MASKED          SharesRelay -> masked ring vectors (Upload streams), summed as they arrive
    CONSISTENCY     ConsistencyRequest -> each survivor's signature on the survivor set it was shown
    UNMASK          UnmaskRequest (+ the signatures) -> revealed shares -> the sum, and nothing else

The coordinator never announces a sum over fewer than the federation's ``min_contributors`` and
never uses a threshold below it; each site enforces its own ``[privacy]`` floor on top. A site
that declines a stage under its policy says so (``Submit.refusal``): it is recorded, logged and
no longer waited for.

For phases after the first, the pairwise masks are bound to H(broadcast) on both sides, so a
coordinator that sends different broadcasts (e.g. a different Q) to different sites gets noise.
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import Iterable

import numpy as np

from .. import secagg_wire
from .. import secure_agg as sa
from ..proto import codec
from ..strategies import cohort_metrics
from .collect import check_names
from .cohort import min_participants
from .config import CoordinatorConfig
from .errors import Duplicate, InvalidRequest, StaleStep
from .phase import Layout, Moves, PhaseFactory, PhaseProgress, PhaseRequest, PhaseResult
from .steps import SiteId, Step

log = logging.getLogger("fedquilt.coordinator.secagg")

_REPLY_KIND = {Step.SECAGG_ADVERTISE: "KeyAdvertisement", Step.SECAGG_SHARE: "EncryptedShares",
               Step.SECAGG_CONSISTENCY: "ConsistencySignature", Step.SECAGG_UNMASK: "RevealedShares"}


class SecureSum:
    """Collects one phase through a ``secure_agg.ServerSession`` (a ``phase.Phase``)."""

    takes_messages = True

    def __init__(self, participants: set[SiteId] | frozenset[SiteId], *, modules: Iterable[str] = (), saved: Iterable[str] = (), clip: float,
                 min_frac_bits: int, threshold: int | None, ca_pem: bytes, mask_context: bytes, stage_timeout: float,
                 now: float, min_contributors: int = 2) -> None:
        self.participants = set(participants)
        self.min_contributors = max(2, int(min_contributors))
        """No sum is announced over fewer sites, and the threshold is never below it."""
        self.refusals: dict[SiteId, str] = {}
        """Sites that declined a stage under their own privacy policy, and why."""
        self.modules = frozenset(modules)
        self.saved = tuple(saved)
        self.clip, self.min_frac_bits, self.threshold = clip, min_frac_bits, threshold
        self.ca_pem, self.mask_context = ca_pem, mask_context
        self.stage_timeout = stage_timeout
        self.stage = Step.DECLARE_LAYOUT
        self.deadline = now + stage_timeout
        self.layouts: dict[SiteId, list[tuple[str, tuple[int, ...]]]] = {}
        self.session: sa.ServerSession | None = None
        self.result_: sa.AggregateResult | None = None
        self.done = False
        self.expected: set[SiteId] = set(participants)
        self.heard: set[SiteId] = set()
        self._replies: dict[SiteId, bytes] = {}

    # ---- steps handed to sites ----------------------------------------------------------------

    def start(self) -> Moves:
        """Every participant first declares its vector layout."""
        return {s: (Step.DECLARE_LAYOUT, b"") for s in self.participants}

    def message(self, site: SiteId, kind: Step, payload: bytes) -> None:
        """A small stage reply from a site."""
        if kind is not self.stage:
            raise StaleStep(f"secure sum is collecting {self.stage.value}, not {kind.value}")
        digest = hashlib.sha256(payload).digest()
        if site in self.heard:
            if self._replies.get(site) == digest:
                return  # an identical retry after a lost reply: already counted
            raise Duplicate(f"{site} already sent a different {kind.value} message")
        if kind is Step.DECLARE_LAYOUT:
            layout = codec.decode_layout(payload)
            if not layout or any(math.prod(shape) == 0 for _, shape in layout):
                raise InvalidRequest(f"{site} declared an empty layout or an empty tensor")
            check_names(site, dict(layout), self.modules, self.saved)
            self.layouts[site] = layout
            self.heard.add(site)
        else:
            assert self.session is not None
            self._receive(site, secagg_wire.decode_secagg(_REPLY_KIND[kind], payload))
        self._replies[site] = digest

    def refuse(self, site: SiteId, kind: Step, reason: str) -> None:
        """A site declines the current stage under its policy: record it and stop waiting for it."""
        if kind is not self.stage:
            raise StaleStep(f"secure sum is collecting {self.stage.value}, not {kind.value}")
        if site not in self.expected:
            raise InvalidRequest(f"{site} is not expected in {kind.value}")
        log.warning("secure sum: %s refused %s under its privacy policy: %s", site, kind.value, reason[:500])
        self.refusals[site] = reason[:500]
        self.expected.discard(site)

    def upload_step(self, encoding: str) -> Step:
        """Uploads to a secure sum are masked inputs (the encoding is checked with the body)."""
        return Step.SECAGG_MASKED

    def upload_size(self, round_id: str) -> int | None:
        """The exact size of a masked input: the session id and one ring element per value."""
        session = self.session
        if session is None or self.stage is not Step.SECAGG_MASKED:
            raise StaleStep(f"round {round_id} is not collecting masked input")
        width = 4 if session.params.ring_bits == 32 else 8
        return int(codec.SESSION_ID_BYTES + width * session.layout.size)

    def upload(self, site: SiteId, encoding: str, layout: Layout, payload: bytes) -> bool:
        """A site's masked vector (an Upload stream); added to the running sum at once."""
        if self.stage is not Step.SECAGG_MASKED or self.session is None:
            raise StaleStep("secure sum is not collecting masked input")
        bits = self.session.params.ring_bits
        if encoding != f"RING_U{bits}":
            raise InvalidRequest(f"masked input must be RING_U{bits}, got {encoding}")
        if site in self.heard:
            return False
        session_id, vector = codec.decode_masked(payload, bits, self.session.layout.size)
        self._receive(site, sa.MaskedInput(session_id, sa.SiteId(site), vector))
        return True

    def _receive(self, site: SiteId, msg: sa.ClientMessage) -> None:
        assert self.session is not None
        try:
            self.session.receive(sa.SiteId(site), msg)
        except sa.SecAggError as exc:
            log.warning("secure sum: rejected %s from %s: %s", type(msg).__name__, site, exc)
            raise InvalidRequest(f"{type(msg).__name__} rejected: {exc}") from None
        self.heard.add(site)

    # ---- the driver ---------------------------------------------------------------------------

    def advance(self, now: float) -> Moves:
        """Close the stage when everyone expected answered or the deadline passed; returns new steps."""
        if self.done or (self.expected - self.heard and now < self.deadline):
            return {}
        late = sorted(self.expected - self.heard)
        if late:
            log.warning("secure sum: %s missed the %s deadline", late, self.stage.value)
        moves = self._close_stage()
        self.heard, self._replies = set(), {}
        self.deadline = now + self.stage_timeout
        return moves

    def _close_stage(self) -> Moves:
        if self.stage is Step.DECLARE_LAYOUT:
            return self._announce()
        assert self.session is not None
        if self.stage is Step.SECAGG_ADVERTISE:
            relay = self.session.relay_advertisements()
            payload = secagg_wire.encode_secagg(relay)
            self.expected = {SiteId(a.site) for a in relay.advertisements}
            return self._next(Step.SECAGG_SHARE, {s: payload for s in self.expected})
        if self.stage is Step.SECAGG_SHARE:
            routes = self.session.route_shares()
            self.expected = {SiteId(s) for s in routes}
            return self._next(Step.SECAGG_MASKED, {SiteId(s): secagg_wire.encode_secagg(m) for s, m in routes.items()})
        if self.stage is Step.SECAGG_MASKED:
            check = self.session.request_consistency()
            self.expected = {SiteId(s) for s in check.survivors}
            payload = secagg_wire.encode_secagg(check)
            return self._next(Step.SECAGG_CONSISTENCY, {s: payload for s in self.expected})
        if self.stage is Step.SECAGG_CONSISTENCY:
            req = self.session.request_unmask()
            self.expected = {SiteId(s) for s, _ in req.signatures}
            payload = secagg_wire.encode_secagg(req)
            return self._next(Step.SECAGG_UNMASK, {s: payload for s in self.expected})
        self.result_ = self.session.finish()
        self.done = True
        return {}

    def _announce(self) -> Moves:
        if not self.layouts:
            raise sa.ThresholdNotMet("no site declared its vector layout")
        counts: dict[str, list[SiteId]] = {}
        for site, declared in self.layouts.items():
            counts.setdefault(repr(declared), []).append(site)
        agreed_key = max(counts, key=lambda k: len(counts[k]))
        agreeing = set(counts[agreed_key])
        for site in set(self.layouts) - agreeing:
            log.warning("secure sum: %s declared a different layout; excluded from this sum", site)
        layout = sa.VectorLayout(tuple(self.layouts[next(iter(agreeing))]))
        n = len(agreeing)
        if n < self.min_contributors:
            # Never announce a sum that could decode fewer sites than the federation's minimum (one site's "sum"
            # is that site's update): the round is discarded before any site advertises a key.
            raise sa.ThresholdNotMet(f"only {n} sites declared a layout; a secure sum needs at least "
                                     f"{self.min_contributors} (min_contributors)")
        # A configured threshold can only raise t above an honest majority and min_contributors, never lower it.
        threshold = max(min(self.threshold, n) if self.threshold else 0, n // 2 + 1, self.min_contributors)
        params = sa.default_params(n, self.clip, min_frac_bits=self.min_frac_bits, threshold=threshold)
        self.session = sa.ServerSession(sorted(sa.SiteId(s) for s in agreeing), params, layout, ca_cert_pem=self.ca_pem,
                                        mask_context=self.mask_context)
        payload = secagg_wire.encode_secagg(self.session.start())
        self.expected = agreeing
        return self._next(Step.SECAGG_ADVERTISE, {s: payload for s in agreeing})

    def _next(self, stage: Step, payloads: dict[SiteId, bytes]) -> Moves:
        self.stage = stage
        return {s: (stage, p) for s, p in payloads.items()}

    # ---- the Phase protocol: progress and outcome ---------------------------------------------

    def progress(self) -> PhaseProgress:
        """Who answered the current stage, and the stage (``advertise``, ``masked``, …)."""
        return PhaseProgress(sent=frozenset(self.heard), substep=self.stage.value.removeprefix("SECAGG_").lower())

    def outcome(self) -> PhaseResult:
        """The decoded float sums for the rule, the n-weighted cohort means of the metrics the sites summed with
        them (split off the rule's sums) and what the manifest records about this secure sum."""
        assert self.session is not None and self.result_ is not None
        p, result = self.session.params, self.result_
        rule_sums, metrics = cohort_metrics.split(result.sums, p.clip)
        facts: dict[str, object] = {
            "protocol": "SecAgg" if p.degree is None else "SecAgg+", "threshold": p.threshold,
            "sites": len(self.session.cohort), "dropped": list(result.dropped), "ring_bits": p.ring_bits,
            "frac_bits": p.frac_bits, "clip": p.clip, "degree": p.degree}
        return PhaseResult(contributors=frozenset(SiteId(s) for s in result.contributors),
                           sums={k: np.asarray(v, np.float64) for k, v in rule_sums.items()},
                           count_resolution=float(2.0 ** -(p.frac_bits or 0)),  # always resolved by SecAggParams
                           cohort_metrics=metrics, secure_facts=facts, session=self.session.session_id)


def make_factory(cfg: CoordinatorConfig) -> PhaseFactory:
    """The secure ``PhaseFactory``: one ``SecureSum`` per phase of a round."""
    ca_pem = cfg.tls.ca.read_bytes()

    def factory(request: PhaseRequest) -> SecureSum:
        context = hashlib.sha256(request.broadcast).digest() if request.phase > 0 else b""
        spec = request.spec
        min_bits = int(spec.params.get("min_frac_bits", cfg.secagg.min_frac_bits))
        return SecureSum(request.participants, modules=spec.shapes, saved=spec.modules_to_save, clip=cfg.secagg.clip,
                         min_frac_bits=min_bits, threshold=cfg.secagg.threshold, ca_pem=ca_pem, mask_context=context,
                         stage_timeout=cfg.federation.stage_timeout, now=request.now,
                         min_contributors=max(2, min_participants(cfg.federation)))

    return factory
