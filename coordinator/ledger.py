"""The federation's published progress, and the record of every finished round.

``Ledger`` holds the current global state (decoded and encoded), its version, the rounds published and
the history the status page shows; it writes a round's aggregate as a version (``publish``: the
manifest's facts, the history entry, then the ``Publisher``) and records a discarded round. It also
keeps the site-level privacy account: every decoded secure sum is one release of the Gaussian
mechanism, with only the contributors' noise shares in it (``strategies.site_dp``).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Iterable, Mapping, Sequence

from ..contract import encode_aggregate
from ..strategies.base import Aggregate
from .config import FederationConfig
from .manifest import max_epsilon
from .round_record import Events, Publisher, RoundRecord
from .steps import SiteId

log = logging.getLogger("fedquilt.coordinator.rounds")

HistoryEntry = dict[str, object]
"""One finished round as the status page and the state store show it (JSON)."""


class Ledger:
    """Published versions and round history for one federation."""

    def __init__(self, *, fed: FederationConfig, secure: bool, publisher: Publisher, events: Events,
                 glob: Aggregate | None, global_version: str | None, rounds_done: int,
                 history: Sequence[Mapping[str, object]], site_noise: Mapping[str, float] | None, phases: int) -> None:
        self.fed, self.secure, self.publisher, self.events = fed, secure, publisher, events
        self.glob, self.global_version, self.rounds_done = glob, global_version, rounds_done
        self.encoded_glob = encode_aggregate(glob)
        self.history: list[HistoryEntry] = [dict(h) for h in history]
        self.site_noise = site_noise
        self.phases = phases

    @property
    def finished(self) -> bool:
        """Every planned round is published."""
        return self.rounds_done >= self.fed.rounds

    def publish(self, rnd: RoundRecord, agg: Aggregate, now: float, samples: int) -> str:
        """Write ``agg`` as round ``rnd``'s version; the history entry and event follow. Returns the version."""
        facts: dict[str, object] = {
            "base_fingerprint": self.fed.base_fingerprint, "rule": self.fed.rule, "round_id": rnd.spec.round_id,
            "contributors": len(rnd.participants), "cohort": len(rnd.cohort), "samples": samples,
            "dropouts": len(rnd.cohort) - len(rnd.participants),
            "secure_aggregation": dict(rnd.result.secure_facts) if rnd.result and rnd.result.secure_facts else None,
            "privacy": {s: rnd.trained[s].get("dp") for s in sorted(rnd.participants) if rnd.trained[s].get("dp")},
            "previous_version": self.global_version,
            "site_level_privacy": self.site_level_privacy(rnd),
        }
        metrics = [rnd.trained[s] for s in sorted(rnd.participants)]
        entry: HistoryEntry = {  # everything that can fail is computed before the version is written
            "round": rnd.number, "version": None, "contributors": len(rnd.participants),
            "dropouts": len(rnd.cohort) - len(rnd.participants), "seconds": round(now - rnd.started, 2),
            "loss_before": _mean(m.get("loss_before") for m in metrics),
            "loss_after": _mean(m.get("loss_after") for m in metrics),
            "eval_loss": _mean(m.get("eval_loss") for m in metrics),
        }
        if self.site_noise is not None:
            entry["site_noise_sigmas"] = list(rnd.site_noise_sigmas)
        if self.secure:  # cohort aggregates from the secure sum only; no per-site metric is used
            entry.update({k: rnd.cohort_metrics.get(k) for k in ("loss_before", "loss_after", "eval_loss")})
            entry["clipped"] = int(rnd.cohort_metrics.get("clipped") or 0)
        encoded = encode_aggregate(agg)
        version = self.publisher(rnd.number, agg, facts)
        self.glob, self.global_version, self.encoded_glob = agg, version, encoded
        self.rounds_done = rnd.number
        entry["version"] = version
        self.history.append(entry)
        published_facts = {"round_id": rnd.spec.round_id, "published_at": utc_now(),
                           "epsilon": max_epsilon(facts)}  # added after the event below (which names round_id itself)
        log.info("round %d published as %s (%d contributors)", rnd.number, version, len(rnd.participants),
                 extra={"round": rnd.number, "version": version})
        self.events("round_published", round_id=rnd.spec.round_id, **entry)
        entry.update(published_facts)
        return version

    def discard(self, rnd: RoundRecord, why: str) -> None:
        """Record round ``rnd`` as discarded with ``why``."""
        log.warning("round %d discarded: %s", rnd.number, why, extra={"round": rnd.number})
        # A discarded round's secure sum may still have been decoded: its cohort-level clip count is reported
        # (clipping is never silent), and nothing per site.
        clipped = {"clipped": int(rnd.cohort_metrics["clipped"] or 0)} if rnd.cohort_metrics.get("clipped") else {}
        self.history.append({"round": rnd.number, "version": None, "discarded": why, **clipped,
                             **({"site_noise_sigmas": rnd.site_noise_sigmas} if self.site_noise is not None else {})})
        self.events("round_discarded", round=rnd.number, reason=why, round_id=rnd.spec.round_id, **clipped)

    # ---- site-level privacy -------------------------------------------------------------------

    def record_release(self, rnd: RoundRecord, contributors: Iterable[SiteId]) -> None:
        """One secure sum was decoded: the site-level noise in it is only the contributors' shares."""
        if self.site_noise is not None and self.secure:
            from ..strategies.site_dp import effective_sigma

            spec_sites = int((rnd.spec.secagg or {}).get("site_noise", {}).get("sites", len(rnd.cohort)))
            rnd.site_noise_sigmas.append(effective_sigma(self.site_noise["sigma"], len(set(contributors)), spec_sites))

    def site_level_privacy(self, rnd: RoundRecord) -> dict[str, object] | None:
        """Site-level (ε, δ) of every secure sum decoded so far, with the noise actually in it (strategies/site_dp)."""
        if self.site_noise is None:
            return None
        from ..strategies.site_dp import MODEL, site_level_epsilon

        sigmas: list[float] = []
        for entry in self.history:  # rounds recorded before this accounting: every phase at the nominal σ
            recorded = entry.get("site_noise_sigmas", [self.site_noise["sigma"]] * self.phases)
            if isinstance(recorded, list):
                sigmas.extend(float(x) for x in recorded if isinstance(x, (int, float)))
        sigmas.extend(rnd.site_noise_sigmas)
        eps = site_level_epsilon(sigmas, self.site_noise["delta"])
        return {"epsilon": eps if eps != float("inf") else None, "delta": self.site_noise["delta"],
                "noise_multiplier": self.site_noise["sigma"], "clip": self.site_noise["clip"], "releases": len(sigmas),
                "effective_noise_multipliers": [round(x, 6) for x in rnd.site_noise_sigmas], "sample_rate": 1.0,
                "model": MODEL}


def utc_now(later_seconds: float = 0.0) -> str:
    """UTC wall time ``later_seconds`` from now, ISO 8601 to the second (for people, never for deadlines)."""
    return (datetime.now(timezone.utc) + timedelta(seconds=later_seconds)).isoformat(timespec="seconds")


def _mean(values: Iterable[object]) -> float | None:
    vals = [float(v) for v in values if isinstance(v, (int, float))]
    return round(sum(vals) / len(vals), 5) if vals else None
