"""Prometheus metrics of one coordinator, in a private registry.

``Metrics`` is a ``RoundObserver``: the orchestrator feeds it round events, the servicer feeds it
byte counts, clipping counts and refused calls, and the gauges are read from the orchestrator's
``status()`` at scrape time (``bind``). Each instance owns its own ``CollectorRegistry``, so tests
and several coordinators in one process never clash on metric names.
"""

from __future__ import annotations

import logging
import math
import time
from enum import Enum
from typing import Any, Callable, Final, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

log = logging.getLogger("fedquilt.coordinator.metrics")

NAMESPACE: Final = "fedquilt"
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
"""The HTTP Content-Type of ``Metrics.exposition()``."""

ROUND_BUCKETS: Final = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, math.inf)
STAGE_BUCKETS: Final = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, math.inf)

StatusFn = Callable[[], Mapping[str, Any]]


class Direction(Enum):
    """Which way bytes moved over the coordinator's gRPC edge."""

    RECEIVED = "received"
    SENT = "sent"


class Metrics:
    """Counters, histograms and status gauges of one coordinator (a ``RoundObserver``)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg, ns = self.registry, NAMESPACE
        self.rounds_opened = Counter("rounds_opened", "Rounds opened with a cohort.", namespace=ns, registry=reg)
        self.rounds_published = Counter("rounds_published", "Rounds published as a new version.", namespace=ns,
                                        registry=reg)
        self.rounds_discarded = Counter("rounds_discarded", "Rounds discarded before publishing.", namespace=ns,
                                        registry=reg)
        self.dropouts = Counter("dropouts", "Cohort sites that did not contribute to a published round.",
                                namespace=ns, registry=reg)
        self.bytes_received = Counter("received_bytes", "Payload bytes received from sites.", namespace=ns,
                                      registry=reg)
        self.bytes_sent = Counter("sent_bytes", "Payload bytes sent to sites (downloads) and consumers (pulls).",
                                  namespace=ns, registry=reg)
        self.clipped_values = Counter("clipped_values", "Submitted values clipped to the declared SecAgg range.",
                                      namespace=ns, registry=reg)
        self.rpc_errors = Counter("rpc_errors", "gRPC calls refused, by method and status code.",
                                  ["method", "code"], namespace=ns, registry=reg)
        self.round_seconds = Histogram("round_seconds", "Wall time from opening to publishing a round.",
                                       namespace=ns, registry=reg, buckets=ROUND_BUCKETS)
        self.stage_seconds = Histogram("stage_seconds", "Wall time of one stage of a round.", ["stage"],
                                       namespace=ns, registry=reg, buckets=STAGE_BUCKETS)
        self.last_publish = Gauge("last_publish_timestamp_seconds", "Unix time of the newest published version.",
                                  namespace=ns, registry=reg)
        build = Gauge("build_info", "The coordinator's fedquilt version (value 1).", ["version"], namespace=ns,
                      registry=reg)
        build.labels(version=_version()).set(1)
        self.clock = clock
        self._status_fn: StatusFn | None = None
        reg.register(_StatusCollector(self))

    # ---- the RoundObserver protocol ------------------------------------------------------------

    def round_event(self, event: str, **facts: Any) -> None:
        """Count one orchestrator event ("round_opened", "round_published", "round_discarded")."""
        if event == "round_opened":
            self.rounds_opened.inc()
        elif event == "round_published":
            self.rounds_published.inc()
            self.last_publish.set(self.clock())
            self._count_published(facts)
        elif event == "stage_finished":
            seconds = facts.get("seconds")
            if isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0:
                self.observe_stage(str(facts.get("stage") or "unknown"), float(seconds))
        elif event == "round_discarded":
            self.rounds_discarded.inc()
            self._count_clipped(facts)
        else:  # an observer must never break the round driver; a new event is just not counted yet
            log.debug("metrics ignore round event %r", event)

    def _count_clipped(self, facts: Mapping[str, Any]) -> None:
        clipped = facts.get("clipped")  # the cohort's total from the secure sum (no site reports its own)
        if isinstance(clipped, int) and not isinstance(clipped, bool) and clipped > 0:
            self.clipped_values.inc(clipped)

    def _count_published(self, facts: Mapping[str, Any]) -> None:
        self._count_clipped(facts)
        dropouts, seconds = facts.get("dropouts"), facts.get("seconds")
        if isinstance(dropouts, int) and dropouts >= 0:
            self.dropouts.inc(dropouts)
        elif dropouts is not None:
            log.warning("round_published event with invalid dropouts %r (round %r)", dropouts, facts.get("round"))
        if isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0:
            self.round_seconds.observe(float(seconds))
        elif seconds is not None:
            log.warning("round_published event with invalid seconds %r (round %r)", seconds, facts.get("round"))

    # ---- called by the servicer ----------------------------------------------------------------

    def record_bytes(self, direction: Direction | str, n: int) -> None:
        """Count ``n`` payload bytes moved in ``direction`` ("received" or "sent")."""
        way = _direction(direction)
        _check_count("n", n)
        (self.bytes_received if way is Direction.RECEIVED else self.bytes_sent).inc(n)

    def record_clipped(self, n: int) -> None:
        """Count ``n`` submitted values that were clipped to the declared range."""
        _check_count("n", n)
        self.clipped_values.inc(n)

    def record_rpc_error(self, method: str, code: Enum | str) -> None:
        """Count one refused call of ``method`` (e.g. "Upload") with ``code`` (a ``grpc.StatusCode`` or its name)."""
        name = code.name if isinstance(code, Enum) else code
        if not method or not name:
            raise ValueError(f"method and code must be non-empty, got {method!r} and {code!r}")
        self.rpc_errors.labels(method=method, code=name).inc()

    def observe_stage(self, stage: str, seconds: float) -> None:
        """Record how long one stage of a round took (stage e.g. "training", "phase0")."""
        if not stage:
            raise ValueError(f"stage must be a non-empty name, got {stage!r}")
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"stage seconds must be finite and >= 0, got {seconds!r}")
        self.stage_seconds.labels(stage=stage).observe(seconds)

    # ---- gauges and exposition -----------------------------------------------------------------

    def bind(self, status_fn: StatusFn) -> None:
        """Read the status gauges from ``status_fn`` (``Orchestrator.status``) at every scrape."""
        self._status_fn = status_fn

    def exposition(self) -> bytes:
        """The Prometheus text exposition of this coordinator's registry."""
        return generate_latest(self.registry)


class _StatusCollector(Collector):
    """Gauges computed from one ``status()`` snapshot per scrape (one lock acquisition, not one per gauge)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        """No fixed description: the gauges exist only once a status function is bound."""
        return []

    def collect(self) -> Iterable[Metric]:
        """The status gauges, or nothing while unbound or when the status cannot be read."""
        status_fn = self._metrics._status_fn
        if status_fn is None:
            return []
        try:
            status = status_fn()
        except Exception:  # a scrape must still return every counter when the status is unreadable
            log.exception("status function failed during a metrics scrape")
            return []
        return list(_status_gauges(status))


def _status_gauges(status: Mapping[str, Any]) -> Iterable[Metric]:
    sites = list(status.get("sites") or [])
    current = status.get("current_round")
    values = {
        "sites_online": ("Enrolled sites seen within the online window.", sum(1 for s in sites if s.get("online"))),
        "sites_enrolled": ("Sites that said Hello to this coordinator.", len(sites)),
        "current_round": ("Number of the round in flight (0 when none).", current["round"] if current else 0),
        "rounds_done": ("Rounds published so far.", status.get("rounds_done") or 0),
        "rounds_planned": ("Rounds the federation plans.", status.get("rounds_planned") or 0),
        "running": ("1 while the federation runs rounds, 0 while paused or finished.",
                    1 if status.get("running") and status.get("state") != "finished" else 0),
        "finished": ("1 once every planned round is published.", 1 if status.get("state") == "finished" else 0),
    }
    for name, (doc, value) in values.items():
        yield GaugeMetricFamily(f"{NAMESPACE}_{name}", doc, value=float(value))
    state = GaugeMetricFamily(f"{NAMESPACE}_federation_state", "1 for the federation's state (running, paused, "
                              "finished).", labels=["state"])
    for name in ("running", "paused", "finished"):
        state.add_metric([name], 1.0 if status.get("state") == name else 0.0)
    yield state
    seen = GaugeMetricFamily(f"{NAMESPACE}_site_last_seen_seconds", "Seconds since each enrolled site last called.",
                             labels=["site"])
    for s in sites:
        ago = s.get("last_seen_seconds_ago")
        if isinstance(ago, (int, float)):
            seen.add_metric([str(s.get("site"))], float(ago))
    yield seen


def _version() -> str:
    from .. import __version__

    return str(__version__)


def _direction(direction: Direction | str) -> Direction:
    if isinstance(direction, Direction):
        return direction
    try:
        return Direction(direction)
    except ValueError:
        raise ValueError(f"direction must be 'received' or 'sent', got {direction!r}") from None


def _check_count(name: str, n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{name} must be an int >= 0, got {n!r}")
