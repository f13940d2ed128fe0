"""Plaintext phases (``phase.Phase``): a running float64 sum, or each site's own vectors.

Sums are accumulated as uploads arrive (memory of one vector, not one per site). Individual
vectors are kept only for rules that need them (plaintext ``stack``), never under SecAgg. A
plaintext phase has one stage: every participant uploads (``UPLOAD_PLAIN``); it is done when all
have, or at its deadline with whoever did.
"""

from __future__ import annotations

import hashlib
import math
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..proto.codec import decode_tensors
from ..strategies.cohort_metrics import is_metric
from ..strategies.base import N_KEY
from ..strategies.saved_modules import is_saved_key, matches, module_of
from .errors import Duplicate, InvalidRequest, StaleStep
from .phase import Layout, Moves, Phase, PhaseProgress, PhaseRequest, PhaseResult
from .steps import SiteId, Step


class PlainCollector:
    """Sums float32 uploads for one phase from a fixed set of participants."""

    keep_individual = False

    def __init__(self, participants: set[SiteId] | frozenset[SiteId], modules: Iterable[str] = (),
                 weights: Mapping[str, int] | None = None, saved: Iterable[str] = (),
                 deadline: float = math.inf) -> None:
        self.participants = set(participants)
        self.deadline = deadline
        """When the phase stops waiting for uploads."""
        self._closed = False
        self.weights = dict(weights or {})
        """The count each site was assigned; its submitted ``N_KEY`` must equal it (empty: unchecked)."""
        self.modules = frozenset(modules)
        self.saved = tuple(saved)
        self.received: dict[SiteId, str] = {}
        self.sums: dict[str, np.ndarray] = {}
        self.individual: dict[SiteId, dict[str, np.ndarray]] = {}
        self._layout: dict[str, tuple[int, ...]] | None = None

    def add(self, site: SiteId, payload: bytes) -> bool:
        """Add one site's tensors; returns False for an identical retry (idempotent)."""
        digest = hashlib.sha256(payload).hexdigest()
        if site in self.received:
            if self.received[site] == digest:
                return False
            raise Duplicate(f"{site} already uploaded different vectors for this phase")
        tensors = decode_tensors(payload)
        self._check(site, tensors)
        self._keep(site, tensors)
        self.received[site] = digest
        return True

    def _keep(self, site: SiteId, tensors: dict[str, np.ndarray]) -> None:
        for name, value in tensors.items():
            acc = self.sums.get(name)
            if acc is None:
                self.sums[name] = value.astype(np.float64)  # a copy: the upload buffer is not kept
            else:
                acc += value

    def _check(self, site: SiteId, tensors: Mapping[str, np.ndarray]) -> None:
        if not tensors:
            raise InvalidRequest(f"{site} uploaded no tensors")
        layout = {k: tuple(v.shape) for k, v in tensors.items()}
        check_names(site, layout, self.modules, self.saved)
        for name, value in tensors.items():
            if value.dtype not in (np.float32, np.float64):
                raise InvalidRequest(f"{name}: expected float32 or float64, got {value.dtype}")
            if not np.isfinite(value).all():
                bad = int((~np.isfinite(value)).sum())
                raise InvalidRequest(f"{name}: {bad} NaN/Inf values; update rejected")
        if site in self.weights and N_KEY in tensors:
            got = tensors[N_KEY].astype(np.float64).reshape(-1)
            if got.size != 1 or got[0] != float(self.weights[site]):
                raise InvalidRequest(f"{site} submitted sample count {got[:2].tolist()}; the federation assigned it "
                                     f"{self.weights[site]}")
        if self._layout is None:
            self._layout = layout
        elif layout != self._layout and not self.keep_individual:
            diff = sorted(set(layout.items()) ^ set(self._layout.items()))[:3]
            raise InvalidRequest(f"{site}'s tensors do not match the phase's layout (first differences: {diff})")

    @property
    def complete(self) -> bool:
        """Every participant has uploaded."""
        return self.participants <= set(self.received)

    def contributors(self) -> set[SiteId]:
        """Sites whose vectors are in the sum."""
        return set(self.received)

    def result(self) -> dict[str, np.ndarray]:
        """The phase's sums (float64)."""
        return self.sums

    # ---- the Phase protocol -------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """Every participant uploaded, or the deadline passed (closed by ``advance``)."""
        return self._closed

    def start(self) -> Moves:
        """Every participant uploads its vectors in float32."""
        return {s: (Step.UPLOAD_PLAIN, b"") for s in self.participants}

    def advance(self, now: float) -> Moves:
        """Close the phase once everyone uploaded or at the deadline; no new steps."""
        self._closed = self._closed or self.complete or now >= self.deadline
        return {}

    def upload_step(self, encoding: str) -> Step:
        """Plaintext phases take FLOAT32 vectors only."""
        if encoding != "FLOAT32":
            raise InvalidRequest(f"this phase collects plaintext FLOAT32 vectors, not {encoding}")
        return Step.UPLOAD_PLAIN

    def upload_size(self, round_id: str) -> int | None:
        """No exact size: the server's upload limit bounds a plaintext body."""
        return None

    def upload(self, site: SiteId, encoding: str, layout: Layout, payload: bytes) -> bool:
        """One site's float32 tensors (``add``)."""
        return self.add(site, payload)

    takes_messages = False
    """A plaintext phase has no stage messages (the round machine refuses them before they get here)."""

    def message(self, site: SiteId, kind: Step, payload: bytes) -> None:
        """Plaintext phases take no stage messages."""
        raise StaleStep("this phase is not a secure sum")

    def refuse(self, site: SiteId, kind: Step, reason: str) -> None:
        """Plaintext phases have no stage to decline."""
        raise StaleStep("this phase is not a secure sum")

    def progress(self) -> PhaseProgress:
        """The sites that uploaded."""
        return PhaseProgress(sent=frozenset(self.received))

    def outcome(self) -> PhaseResult:
        """The sums of whoever uploaded."""
        return PhaseResult(contributors=frozenset(self.received), sums=self.sums)


class IndividualCollector(PlainCollector):
    """Keeps each site's own vectors (plaintext ``stack``: sites' factors may differ in rank, nothing is summed)."""

    keep_individual = True

    def _keep(self, site: SiteId, tensors: dict[str, np.ndarray]) -> None:
        self.individual[site] = tensors

    def outcome(self) -> PhaseResult:
        """Each uploader's own vectors."""
        return PhaseResult(contributors=frozenset(self.received), sums={},
                           individual={str(s): v for s, v in self.individual.items()})


def plain_phase(request: PhaseRequest) -> Phase:
    """The plaintext ``PhaseFactory``: a summing collector, or an individual one for a rule that needs it."""
    kind = IndividualCollector if request.individual else PlainCollector
    spec = request.spec
    return kind(request.participants, modules=spec.shapes, weights=spec.weights, saved=spec.modules_to_save,
                deadline=request.deadline)


def check_names(site: str, layout: Mapping[str, tuple[int, ...]], modules: frozenset[str],
                saved: Sequence[str] = ()) -> None:
    """Every submitted vector is ``N_KEY``, ``<target module>/<what>`` for a module of this round, or
    ``<module>.<param>/saved`` for a module of the round's ``modules_to_save``."""
    if not modules:
        return
    if N_KEY not in layout:
        raise InvalidRequest(f"{site} submitted no sample count ({N_KEY!r})")

    def allowed(k: str) -> bool:
        if k == N_KEY or is_metric(k) or k.rsplit("/", 1)[0] in modules:
            return True
        return bool(saved) and is_saved_key(k) and matches(module_of(k.rsplit("/", 1)[0]), saved)

    bad = sorted(k for k in layout if not allowed(k))
    if bad:
        raise InvalidRequest(f"{site} submitted vectors for modules this round does not train: {bad[:3]}")
