"""The rule's server half as the round machine calls it: the checks on a finished phase, then ``combine``.

Under SecAgg the coordinator sees only sums, so what it checks before it aggregates is what a sum can
show (``round_checks``): enough contributors, the same contributors in every phase of a multi-phase
rule (otherwise one sum minus the other reveals a dropped site's part), and a summed sample count equal
to the counts the contributors were assigned. The rule then gets the round's context exactly as the
sites built theirs (``contract.round_context``: the cohort's ranks, the secure sum's session id as the
public randomness), and returns the next phase's broadcast or the next global state.
"""

from __future__ import annotations

from ..contract import round_context
from ..strategies.base import Aggregate, Broadcast
from ..strategies.rule import IndividualRule, Rule
from .cohort import min_participants
from .config import FederationConfig
from .phase import PhaseResult
from .round_checks import count_problem, norm_growth_problem
from .round_record import RoundRecord
from .steps import SiteId


class ServerHalf:
    """One federation's rule, on the coordinator's side."""

    def __init__(self, rule: Rule | IndividualRule, fed: FederationConfig, secure: bool) -> None:
        self.rule, self.fed, self.secure = rule, fed, secure
        self.individual = isinstance(rule, IndividualRule)
        """The rule needs each site's own vectors (plaintext only)."""
        self.phases = rule.phases if isinstance(rule, Rule) else 1
        """Secure sums (or plaintext collections) per round."""

    def contributors_problem(self, rnd: RoundRecord, result: PhaseResult) -> str | None:
        """Why a finished phase of ``rnd`` has the wrong contributors (None: it has enough, the same as before)."""
        contributors, need = set(result.contributors), min_participants(self.fed)
        if len(contributors) < need:
            return f"{sites_text(len(contributors))} contributed, need {need}"
        if rnd.phase > 0 and contributors != rnd.participants:
            return "participants changed between secure sums; publishing would reveal a dropped site's sketch"
        return None

    def count_problem(self, rnd: RoundRecord, result: PhaseResult) -> str | None:
        """Why the phase's summed sample count is not the contributors' assigned counts (None: it is)."""
        if result.individual is not None:  # each upload's own count was checked against its weight
            return None
        contributors = set(result.contributors)
        return count_problem(result.sums, self._expected_count(contributors, rnd), len(contributors),
                             result.count_resolution)

    def _expected_count(self, contributors: set[SiteId], rnd: RoundRecord) -> float:
        total = float(sum(rnd.spec.weights.get(s, 0) for s in contributors))
        scale = float((rnd.spec.secagg or {}).get("weight_scale", 1.0)) if self.secure else 1.0
        return total / (scale or 1.0)

    def combine(self, rnd: RoundRecord, result: PhaseResult, glob: Aggregate | None) -> Broadcast | Aggregate:
        """The next phase's broadcast or the next global state (ValueError / ArithmeticError: cannot)."""
        # The cohort's ranks, exactly as the sites derive them: a site that drops in training must not change the
        # padding or sketch width the others already submitted with. Under SecAgg sites derive the rule's public
        # randomness from the secure sum's session id (agent secure_sum binds ctx.session to it); server halves
        # that regenerate it (single-pass sketch) need the same.
        ctx = round_context(rnd.spec, session=result.session)
        if isinstance(self.rule, IndividualRule):
            return self.rule.combine_individual(result.individual or {}, ctx, glob)
        return self.rule.combine(rnd.phase, result.sums, ctx, glob, broadcast=rnd.broadcast_objs.get(rnd.phase))

    def growth_problem(self, agg: Aggregate, glob: Aggregate | None) -> str | None:
        """Why the new global's norm is implausible next to the previous one's (None: fine or unbounded)."""
        return norm_growth_problem(agg, glob, self.fed.max_norm_growth)


def sites_text(n: int) -> str:
    """'1 site', '3 sites'."""
    return f"{n} site" if n == 1 else f"{n} sites"
