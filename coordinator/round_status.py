"""The federation's status as one JSON-able snapshot (the status page, ``fedquilt status``, metrics gauges).

Read-only: built from the ledger (versions, history), the round in flight (stage, cohort, each site's
progress, the secure sum's sub-step) and the mailbox (who is online); sites known only from before a
restart are listed offline until they say Hello again.
"""

from __future__ import annotations

from typing import Any, Mapping

from .config import FederationConfig
from .ledger import Ledger
from .mailbox import Mailbox
from .round_record import RoundRecord, RoundStage

KnownSite = tuple[Mapping[str, Any], float]
"""A site's status entry from the state database, and when it was last seen on the coordinator's clock."""


def snapshot(*, fed: FederationConfig, secure: bool, running: bool, ledger: Ledger, current: RoundRecord | None,
             mailbox: Mailbox, known_sites: Mapping[str, KnownSite], now: float) -> dict[str, Any]:
    """The status document (every value JSON-able)."""
    rnd = current
    return {
        "federation": fed.name,
        "model": fed.model,
        "rule": fed.rule,
        "secure_aggregation": secure,
        "running": running,
        "state": "finished" if ledger.finished else "running" if running else "paused",
        "rounds_done": ledger.rounds_done,
        "rounds_planned": fed.rounds,
        "global_version": ledger.global_version,
        "current_round": None if rnd is None else {
            "round": rnd.number, "id": rnd.spec.round_id, "stage": rnd.stage.value, "phase": rnd.phase,
            "cohort": sorted(rnd.cohort), "participants": sorted(rnd.participants),
            **_progress(rnd),
        },
        "sites": sorted([
            {"site": s.site, "online": mailbox.online(s, now) and not s.left, "num_samples": s.num_samples,
             "rank": s.rank, "last_seen_seconds_ago": round(now - s.last_seen, 1)}
            for s in mailbox.sites.values()
        ] + [{**s, "online": False, "last_seen_seconds_ago": round(now - seen, 1)}
               for k, (s, seen) in known_sites.items() if k not in mailbox.sites], key=lambda s: str(s["site"])),
        "history": list(ledger.history),
    }


def _progress(rnd: RoundRecord) -> dict[str, Any]:
    """Per-site progress, the stage's deadline and the secure sum's sub-step, for the status page."""
    done: frozenset[str] = frozenset()
    substep = None
    if rnd.stage is RoundStage.PHASE and rnd.collector is not None:
        progress = rnd.collector.progress()
        done, substep = progress.sent, progress.substep
    sites = {}
    for site in sorted(rnd.cohort):
        if rnd.stage is RoundStage.TRAINING:
            sites[site] = "trained" if site in rnd.trained else "training"
        elif site not in rnd.participants:
            sites[site] = "dropped"
        else:
            sites[site] = "sent" if site in done else "waiting"
    return {"progress": sites, "deadline_utc": rnd.deadline_utc, "secure_sum_step": substep}
