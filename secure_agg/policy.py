"""A site's own floor under every secure sum it takes part in (the coordinator can only raise it).

The coordinator chooses the cohort, the threshold and the SecAgg+ graph degree, and it relays
every list a site sees. A site that trusted those choices could be made to take part in a "sum"
of one. :class:`ClientPolicy` is what the site itself insists on; the client session checks it
at every stage before it advertises keys, shares, masks or reveals anything, and raises
:class:`~.errors.PolicyRefusal` (nothing sent) when the session falls below it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final

from .errors import PolicyRefusal
from .messages import SiteId
from .params import SecAggParams

__all__ = ["ClientPolicy", "DEFAULT_MIN_SITES"]

DEFAULT_MIN_SITES: Final = 3
"""Smallest secure sum a site takes part in unless its operator says otherwise."""


@dataclass(frozen=True, kw_only=True)
class ClientPolicy:
    """What one site accepts in a secure sum, whatever the coordinator announces."""

    min_sites: int = DEFAULT_MIN_SITES
    """Fewest sites in every set the site acts on: cohort, key advertisers, sharers, survivors, signers.
    (1 is allowed here for arithmetic tests; the agent's ``[privacy]`` config never goes below 2.)"""
    min_threshold_fraction: float = 0.5
    """The announced threshold t must be above this fraction of the cohort (0.5: an honest majority)."""
    required_members: frozenset[SiteId] | None = None
    """Multi-phase sums (phase k > 0): exactly these sites must take part at every stage, none may drop."""

    def __post_init__(self) -> None:
        if isinstance(self.min_sites, bool) or not isinstance(self.min_sites, int) or self.min_sites < 1:
            raise ValueError(f"min_sites must be an int >= 1, got {self.min_sites!r}")
        if not 0.0 <= float(self.min_threshold_fraction) < 1.0:
            raise ValueError(f"min_threshold_fraction must be in [0, 1), got {self.min_threshold_fraction!r}")

    def at_least(self, min_sites: int) -> ClientPolicy:
        """This policy, raised (never lowered) to ``min_sites`` (e.g. the federation's min_contributors)."""
        return replace(self, min_sites=max(self.min_sites, int(min_sites)))

    def floor(self, params: SecAggParams) -> int:
        """The fewest sites every stage needs: the announced threshold or this site's minimum, if larger."""
        return max(params.threshold, self.min_sites)

    def check_announce(self, site: SiteId, cohort: tuple[SiteId, ...], params: SecAggParams) -> None:
        """Refuse an announcement below this policy (before any key is made)."""
        n = len(cohort)
        if n < self.min_sites:
            raise PolicyRefusal(f"site {site}: cohort of {n} sites is below this site's minimum of {self.min_sites}")
        if params.threshold <= self.min_threshold_fraction * n:
            raise PolicyRefusal(f"site {site}: threshold {params.threshold} is not above "
                                f"{self.min_threshold_fraction} x {n} sites")
        if params.degree is not None and not params.is_full_graph(n):
            shares = params.share_threshold or 0
            if 2 * shares <= params.degree + 1:
                raise PolicyRefusal(f"site {site}: SecAgg+ share threshold {shares} is at or below half of a "
                                    f"neighbourhood of {params.degree + 1}")
        self.check_members(site, "cohort", frozenset(cohort))

    def check_count(self, site: SiteId, what: str, count: int, params: SecAggParams) -> None:
        """Refuse to act on a set of ``count`` sites smaller than :meth:`floor`."""
        need = self.floor(params)
        if count < need:
            raise PolicyRefusal(f"site {site}: only {count} {what}, this site needs at least {need}")

    def check_members(self, site: SiteId, what: str, members: frozenset[SiteId]) -> None:
        """Multi-phase sums: refuse unless ``members`` are exactly the required sites."""
        if self.required_members is not None and members != self.required_members:
            missing = sorted(self.required_members - members)
            extra = sorted(members - self.required_members)
            raise PolicyRefusal(f"site {site}: {what} differs from the first secure sum's contributors "
                                f"(missing {missing}, extra {extra}); revealing would expose a dropped site")
