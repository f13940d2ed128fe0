"""Who may take part, and who is sampled: admission at Hello, cohort selection and the round's spec.

Theory of operation
-------------------
A site is admitted when it runs the federation's base model and task, declares positive counts and a
rank within ``max_rank`` and every target's ``min(d, k)``, and trains the federation's targets (fixed
by the operator's config, else by the newest version, else by what most online sites declare when
round 1 opens). A round opens once ``cohort_size`` sites are online (without it: every online site, and
before this instance's first round every site known from before a restart), or once ``wait_for_sites``
seconds have passed with at least ``min_sites``, logging who is missing. It samples ``over_select``
more than it needs; the machine releases the slowest once enough have trained.

Weights (issue 12: one site cannot take over by declaring numbers): each site's submission is weighted
by 1 (``weighting = "equal"``) or by its declared count under ``max_samples_per_site``.
"""

from __future__ import annotations

import logging
import math
import random
import secrets
from dataclasses import dataclass
from typing import Mapping, Sequence

from ..proto.round_spec import RoundSpec
from .config import FederationConfig, Weighting
from .errors import InvalidRequest, Mismatch
from .mailbox import SiteRecord
from .round_checks import shape_diff
from .steps import SiteId

log = logging.getLogger("fedquilt.coordinator.rounds")

Shapes = dict[str, tuple[int, int]]
"""Target module -> (d, k)."""


def min_participants(fed: FederationConfig) -> int:
    """The fewest contributors a round may aggregate (``min_contributors``, else ``min(2, min_sites)``);
    a secure sum enforces its own threshold on top."""
    if fed.min_contributors is not None:
        return int(fed.min_contributors)
    return min(2, fed.min_sites)


@dataclass(frozen=True)
class CohortChoice:
    """A sampled cohort, and how many of it must finish training before the rest is released."""

    cohort: frozenset[SiteId]
    needed: int


class Cohort:
    """Admission and sampling for one federation (state: its targets, the wait for sites, the sampler)."""

    def __init__(self, fed: FederationConfig, shapes: Shapes | None, known_sites: Sequence[str], seed: int | None) -> None:
        self.fed = fed
        self.shapes = shapes
        """The federation's targets: the operator's, else the newest version's, else fixed when round 1 opens."""
        self.known = frozenset(SiteId(s) for s in known_sites)
        """Sites enrolled before a restart (the first round waits for them)."""
        self._rng = random.Random(seed)
        self._waiting_since: float | None = None
        self._opened_any = False

    def admit(self, site: SiteId, num_samples: int, rank: int, alpha: float, fingerprint: str, task: str,
              shapes: Mapping[str, tuple[int, int]]) -> None:
        """Mismatch / InvalidRequest unless the site may join this federation."""
        fed = self.fed
        if fingerprint != fed.base_fingerprint:
            raise Mismatch(f"{site}: base model fingerprint {fingerprint[:16]}… does not match the federation's "
                           f"{fed.base_fingerprint[:16]}…")
        if task != fed.task:
            raise Mismatch(f"{site}: site task {task!r} does not match the federation's {fed.task!r}")
        if num_samples <= 0 or rank <= 0 or not math.isfinite(alpha) or alpha <= 0:
            raise InvalidRequest(f"{site}: num_samples, lora_rank and lora_alpha must be > 0 (got {num_samples}, {rank}, {alpha})")
        if not shapes:
            raise InvalidRequest(f"{site}: the site declared no target modules")
        limit = min(fed.max_rank, *(min(d, k) for d, k in shapes.values()))
        if rank > limit:
            raise InvalidRequest(f"{site}: lora_rank {rank} is over {limit} (the federation's max_rank {fed.max_rank} "
                                 "and min(d, k) of every target)")
        if self.shapes is not None and dict(shapes) != self.shapes:
            raise Mismatch(f"{site}: the site's target modules or shapes differ from the federation's: "
                           f"{shape_diff(dict(shapes), self.shapes)}")

    def choose(self, sites: Mapping[SiteId, SiteRecord], online: Sequence[SiteId], now: float,
               number: int) -> CohortChoice | None:
        """The cohort of round ``number`` from the ``online`` sites, or None while the round should wait."""
        fed = self.fed
        eligible = self._matching_shapes(sites, list(online))
        if len(eligible) < fed.min_sites:
            return None
        wanted = self._wanted(sites)
        if len(eligible) < wanted:
            if self._waiting_since is None:
                self._waiting_since = now
            if now - self._waiting_since < fed.wait_for_sites:
                return None
            missing = sorted((set(sites) | self.known) - set(eligible))
            log.warning("round %d: waited %.0fs for %d online sites, %d are; opening without %s",
                        number, now - self._waiting_since, wanted, len(eligible),
                        missing if missing else "sites that never enrolled")
        self._waiting_since = None
        self._opened_any = True
        if fed.cohort_size is not None:
            needed = min(fed.cohort_size, len(eligible))
            size = min(len(eligible), math.ceil(needed * (1.0 + fed.over_select)))
        else:  # everyone online is sampled; over-selection lowers how many must finish
            size = len(eligible)
            needed = max(min(fed.min_sites, size), math.ceil(size / (1.0 + fed.over_select)))
        cohort = frozenset(self._rng.sample(eligible, size))
        if self.shapes is None:  # a fresh federation: its targets are what most online sites declared
            self.shapes = dict(sites[eligible[0]].shapes)
            log.info("federation targets fixed at round %d: %d modules", number, len(self.shapes))
        return CohortChoice(cohort, needed)

    def _wanted(self, sites: Mapping[SiteId, SiteRecord]) -> int:
        """Online sites a round waits for: ``cohort_size``; without it every online site, and before this
        instance's first round also every site known from before a restart (so it does not open with the first
        few that reconnect)."""
        if self.fed.cohort_size is not None:
            return self.fed.cohort_size
        if not self._opened_any:
            return len(set(sites) | self.known)
        return 0

    def _matching_shapes(self, sites: Mapping[SiteId, SiteRecord], online: list[SiteId]) -> list[SiteId]:
        """The online sites that train the federation's targets (before they are fixed: the most common)."""
        if not online:
            return online
        if self.shapes is None:
            groups: dict[str, list[SiteId]] = {}
            for s in online:
                groups.setdefault(repr(sorted(sites[s].shapes.items())), []).append(s)
            return max(groups.values(), key=len)
        return [s for s in online if sites[s].shapes == self.shapes]

    def weight(self, record: SiteRecord) -> int:
        """The count a site weights its submission by: 1 (equal), or its declared count under the cap."""
        if self.fed.weighting is Weighting.EQUAL:
            return 1
        cap = self.fed.max_samples_per_site
        return record.num_samples if cap is None else min(record.num_samples, cap)

    def spec(self, number: int, choice: CohortChoice, sites: Mapping[SiteId, SiteRecord], *, secure: bool,
             site_noise: Mapping[str, float] | None, global_version: str | None) -> RoundSpec:
        """The spec of round ``number`` for ``choice`` (fresh nonce; weights and SecAgg settings fixed here)."""
        fed, cohort = self.fed, sorted(choice.cohort)
        assert self.shapes is not None  # fixed by ``choose``
        nonce = secrets.token_hex(16)
        weights = {s: self.weight(sites[s]) for s in cohort}
        return RoundSpec(
            round_id=f"r{number:04d}-{nonce[:8]}", round=number, rule=fed.rule, params=dict(fed.rule_params),
            ranks={s: sites[s].rank for s in cohort}, shapes=self.shapes, train=dict(fed.train), nonce=nonce,
            global_version=global_version, secagg=self._secagg_spec(weights, site_noise) if secure else None,
            weights=weights, modules_to_save=list(fed.modules_to_save),
        )

    def _secagg_spec(self, weights: Mapping[SiteId, int], site_noise: Mapping[str, float] | None) -> dict[str, object]:
        # Sites divide every submitted value by this public constant so weighted values stay inside the
        # declared clip range (p_i = n_i/Σn is unchanged: the sample counts are divided too).
        spec: dict[str, object] = {"weight_scale": float(sum(weights.values())),
                                   "min_contributors": max(2, min_participants(self.fed))}  # sites may only raise it
        if site_noise is not None:
            spec["site_noise"] = {"sigma": site_noise["sigma"], "clip": site_noise["clip"], "sites": len(weights)}
        return spec
