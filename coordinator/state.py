"""Durable coordinator state: federations, enrolled sites, round history, published versions.

Theory of operation
-------------------
The model store is the source of truth for versions (a version exists iff its manifest landed);
this database records everything around them so the status page and the Admin RPCs survive a
restart. ``StateRecorder`` is a ``RoundObserver``: the orchestrator's events become one short
transaction each. On start, ``restore`` reconciles the database with the store (a crash between
the store's commit and the database write leaves a published version without its row: the row is
rebuilt from the manifest), marks rounds that were opened but never closed ``interrupted``, and
hands back the history, the known sites and the running flag for the ``Orchestrator``.

SQLite runs in WAL mode with ``synchronous=NORMAL``: a committed transaction is in the WAL
before ``COMMIT`` returns, so a killed process (kill -9) loses nothing; only a power loss can
drop the last commits, never corrupt the file, and whatever it drops that matters (a published
round) is rebuilt from the store. ``FULL`` would add an fsync per event for no further guarantee
that the reconciliation does not already give.

A fresh database is created at schema version 1 and walked through every step of ``MIGRATIONS``,
so the migration path runs on every new deployment, not only on upgrades.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Final, Iterator, Mapping, Protocol

from .registry import ModelStore

log = logging.getLogger("fedquilt.coordinator.state")


class StateError(Exception):
    """The state database cannot be opened, migrated or written."""


class RoundState(Enum):
    """Where a recorded round ended (``OPENED``: still in flight, or the process died)."""

    OPENED = "opened"
    PUBLISHED = "published"
    DISCARDED = "discarded"
    INTERRUPTED = "interrupted"


INTERRUPTED_REASON: Final = "interrupted: the coordinator stopped during the round; it was restarted with fresh keys"

_V1: Final = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE federations (name TEXT PRIMARY KEY, running INTEGER NOT NULL);
CREATE TABLE sites (federation TEXT NOT NULL, site TEXT NOT NULL, num_samples INTEGER NOT NULL,
    rank INTEGER NOT NULL, alpha REAL NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL,
    PRIMARY KEY (federation, site));
CREATE TABLE rounds (seq INTEGER PRIMARY KEY AUTOINCREMENT, federation TEXT NOT NULL, round_id TEXT NOT NULL UNIQUE,
    round INTEGER NOT NULL, state TEXT NOT NULL CHECK (state IN ('opened', 'published', 'discarded', 'interrupted')),
    version TEXT, cohort INTEGER, contributors INTEGER, dropouts INTEGER, reason TEXT,
    opened_at REAL NOT NULL, closed_at REAL);
CREATE TABLE versions (model TEXT NOT NULL, version TEXT NOT NULL, round INTEGER NOT NULL, round_id TEXT,
    published_at REAL NOT NULL, PRIMARY KEY (model, version));
INSERT INTO schema_version (version) VALUES (1);
"""


def _v1_to_v2(db: sqlite3.Connection) -> None:
    """Version 2 keeps each round's wall time and mean losses (version 1 had only counts)."""
    db.execute("ALTER TABLE rounds ADD COLUMN seconds REAL")
    db.execute("ALTER TABLE rounds ADD COLUMN losses TEXT NOT NULL DEFAULT '{}'")


MIGRATIONS: Final[dict[int, Callable[[sqlite3.Connection], None]]] = {1: _v1_to_v2}
"""from-version -> the step that upgrades a database to from-version + 1, inside one transaction."""
SCHEMA_VERSION: Final = 1 + len(MIGRATIONS)
LOSS_KEYS: Final = ("loss_before", "loss_after", "eval_loss")


@dataclass(frozen=True)
class SiteRow:
    """One site as last enrolled (wall-clock times)."""

    site: str
    num_samples: int
    rank: int
    alpha: float
    first_seen: float
    last_seen: float


@dataclass(frozen=True)
class RoundRow:
    """One recorded round attempt."""

    round_id: str
    round: int
    state: RoundState
    version: str | None
    cohort: int | None
    contributors: int | None
    dropouts: int | None
    seconds: float | None
    losses: dict[str, float | None]
    reason: str | None
    opened_at: float
    closed_at: float | None

    def history_entry(self) -> dict[str, Any]:
        """The row as an ``Orchestrator.status()["history"]`` entry."""
        if self.state is RoundState.PUBLISHED:
            return {"round": self.round, "version": self.version, "contributors": self.contributors,
                    "dropouts": self.dropouts, "seconds": self.seconds,
                    **{k: self.losses.get(k) for k in LOSS_KEYS}}
        entry: dict[str, Any] = {"round": self.round, "version": None, "discarded": self.reason or self.state.value}
        if self.state is RoundState.INTERRUPTED:
            entry["interrupted"] = True
        return entry


class StateStore(Protocol):
    """Durable history of one or more federations (SQLite by default)."""

    def set_running(self, federation: str, running: bool) -> None:
        """Remember whether the operator has the federation running or paused."""
        ...

    def running(self, federation: str) -> bool | None:
        """The remembered flag (None: never set)."""
        ...

    def record_site(self, federation: str, site: SiteRow) -> None:
        """Insert or update an enrolled site (keeps the first ``first_seen``)."""
        ...

    def sites(self, federation: str) -> list[SiteRow]:
        """Every site that ever enrolled, by id."""
        ...

    def round_opened(self, federation: str, round_id: str, round: int, cohort: int, at: float) -> None:
        """A round opened with ``cohort`` sites."""
        ...

    def round_published(self, federation: str, model: str, row: RoundRow) -> None:
        """A round published ``row.version`` (inserts the round if its opening was never recorded)."""
        ...

    def round_closed(self, federation: str, round_id: str, state: RoundState, reason: str, at: float) -> None:
        """A round ended without a version (discarded or interrupted)."""
        ...

    def rounds(self, federation: str) -> list[RoundRow]:
        """Every recorded round attempt, by round number then order of opening."""
        ...

    def versions(self, model: str) -> dict[str, int]:
        """Recorded versions of ``model`` -> round number."""
        ...

    def forget_version(self, model: str, version: str, federation: str, at: float) -> None:
        """The store does not hold ``version``: drop its row and mark its round discarded (the store wins)."""
        ...

    def close(self) -> None:
        """Release the database."""
        ...


class SqliteStateStore:
    """``StateStore`` in one SQLite file (WAL mode; one connection guarded by a lock; a transaction per write)."""

    def __init__(self, path: Path, migrations: Mapping[int, Callable[[sqlite3.Connection], None]] = MIGRATIONS) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StateError(f"{path}: SQLite refused WAL mode (journal_mode={mode!r}); is it on a network filesystem?")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._migrate(dict(migrations))

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _migrate(self, migrations: dict[int, Callable[[sqlite3.Connection], None]]) -> None:
        target = 1 + len(migrations)
        with self._tx() as db:
            if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'schema_version'").fetchone() is None:
                for statement in _V1.split(";"):
                    if statement.strip():
                        db.execute(statement)
            version = int(db.execute("SELECT version FROM schema_version").fetchone()[0])
            if version > target:
                raise StateError(f"{self.path}: schema version {version} is newer than this coordinator's {target}; "
                                 "upgrade fedquilt")
            for step in range(version, target):
                if step not in migrations:
                    raise StateError(f"{self.path}: no migration from schema version {step}")
                migrations[step](db)
                log.info("state database %s migrated to schema version %d", self.path, step + 1)
            db.execute("UPDATE schema_version SET version = ?", (target,))

    def schema_version(self) -> int:
        """The schema version on disk."""
        with self._lock:
            return int(self._db.execute("SELECT version FROM schema_version").fetchone()[0])

    def set_running(self, federation: str, running: bool) -> None:
        """Remember whether the operator has the federation running or paused."""
        with self._tx() as db:
            db.execute("INSERT INTO federations (name, running) VALUES (?, ?) "
                       "ON CONFLICT (name) DO UPDATE SET running = excluded.running", (federation, int(running)))

    def running(self, federation: str) -> bool | None:
        """The remembered flag (None: never set)."""
        with self._lock:
            row = self._db.execute("SELECT running FROM federations WHERE name = ?", (federation,)).fetchone()
        return None if row is None else bool(row[0])

    def record_site(self, federation: str, site: SiteRow) -> None:
        """Insert or update an enrolled site (keeps the first ``first_seen``)."""
        with self._tx() as db:
            db.execute("INSERT INTO sites VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (federation, site) DO UPDATE SET "
                       "num_samples = excluded.num_samples, rank = excluded.rank, alpha = excluded.alpha, "
                       "last_seen = excluded.last_seen",
                       (federation, site.site, site.num_samples, site.rank, site.alpha, site.first_seen, site.last_seen))

    def sites(self, federation: str) -> list[SiteRow]:
        """Every site that ever enrolled, by id."""
        with self._lock:
            rows = self._db.execute("SELECT site, num_samples, rank, alpha, first_seen, last_seen FROM sites "
                                    "WHERE federation = ? ORDER BY site", (federation,)).fetchall()
        return [SiteRow(str(r[0]), int(r[1]), int(r[2]), float(r[3]), float(r[4]), float(r[5])) for r in rows]

    def round_opened(self, federation: str, round_id: str, round: int, cohort: int, at: float) -> None:
        """A round opened with ``cohort`` sites."""
        with self._tx() as db:
            db.execute("INSERT INTO rounds (federation, round_id, round, state, cohort, opened_at) VALUES (?, ?, ?, ?, ?, ?)",
                       (federation, round_id, round, RoundState.OPENED.value, cohort, at))

    def round_published(self, federation: str, model: str, row: RoundRow) -> None:
        """A round published ``row.version`` (inserts the round if its opening was never recorded)."""
        values = (RoundState.PUBLISHED.value, row.version, row.contributors, row.dropouts, row.seconds,
                  json.dumps(row.losses), row.closed_at)
        with self._tx() as db:
            updated = db.execute("UPDATE rounds SET state = ?, version = ?, contributors = ?, dropouts = ?, seconds = ?, "
                                 "losses = ?, closed_at = ?, reason = NULL WHERE federation = ? AND round_id = ?",
                                 (*values, federation, row.round_id)).rowcount
            if not updated:
                db.execute("INSERT INTO rounds (state, version, contributors, dropouts, seconds, losses, closed_at, "
                           "federation, round_id, round, cohort, opened_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (*values, federation, row.round_id, row.round, row.cohort, row.opened_at))
            db.execute("INSERT OR REPLACE INTO versions VALUES (?, ?, ?, ?, ?)",
                       (model, row.version, row.round, row.round_id, row.closed_at or row.opened_at))

    def round_closed(self, federation: str, round_id: str, state: RoundState, reason: str, at: float) -> None:
        """A round ended without a version (discarded or interrupted)."""
        if state not in (RoundState.DISCARDED, RoundState.INTERRUPTED):
            raise ValueError(f"round_closed takes DISCARDED or INTERRUPTED, got {state}")
        with self._tx() as db:
            updated = db.execute("UPDATE rounds SET state = ?, reason = ?, closed_at = ? WHERE federation = ? "
                                 "AND round_id = ?", (state.value, reason, at, federation, round_id)).rowcount
        if not updated:
            raise StateError(f"round {round_id!r} of federation {federation!r} was never recorded as opened")

    def rounds(self, federation: str) -> list[RoundRow]:
        """Every recorded round attempt, by round number then order of opening."""
        with self._lock:
            rows = self._db.execute(
                "SELECT round_id, round, state, version, cohort, contributors, dropouts, seconds, losses, reason, "
                "opened_at, closed_at FROM rounds WHERE federation = ? ORDER BY round, seq", (federation,)).fetchall()
        return [RoundRow(r[0], int(r[1]), RoundState(r[2]), r[3], r[4], r[5], r[6], r[7], dict(json.loads(r[8])), r[9],
                         float(r[10]), r[11]) for r in rows]

    def versions(self, model: str) -> dict[str, int]:
        """Recorded versions of ``model`` -> round number."""
        with self._lock:
            rows = self._db.execute("SELECT version, round FROM versions WHERE model = ?", (model,)).fetchall()
        return {str(v): int(r) for v, r in rows}

    def forget_version(self, model: str, version: str, federation: str, at: float) -> None:
        """The store does not hold ``version``: drop its row and mark its round discarded (the store wins)."""
        reason = f"published as {version}, but the model store does not hold it"
        with self._tx() as db:
            db.execute("DELETE FROM versions WHERE model = ? AND version = ?", (model, version))
            db.execute("UPDATE rounds SET state = ?, reason = ?, version = NULL, closed_at = ? WHERE federation = ? "
                       "AND version = ?", (RoundState.DISCARDED.value, reason, at, federation, version))

    def close(self) -> None:
        """Release the database."""
        with self._lock:
            self._db.close()


class StateRecorder:
    """A ``RoundObserver`` that writes the orchestrator's events to a ``StateStore``."""

    def __init__(self, state: StateStore, federation: str, model: str, clock: Callable[[], float] = time.time) -> None:
        self.state, self.federation, self.model, self.clock = state, federation, model, clock

    def round_event(self, event: str, **facts: Any) -> None:
        """Record one event: site_enrolled, federation_running, round_opened/published/discarded."""
        now, fed = self.clock(), self.federation
        if event == "site_enrolled":
            self.state.record_site(fed, SiteRow(str(facts["site"]), int(facts["num_samples"]), int(facts["rank"]),
                                                float(facts["alpha"]), now, now))
        elif event == "federation_running":
            self.state.set_running(fed, bool(facts["running"]))
        elif event == "round_opened":
            self.state.round_opened(fed, str(facts["round_id"]), int(facts["round"]), int(facts["cohort"]), now)
        elif event == "round_published":
            seconds = facts.get("seconds")
            self.state.round_published(fed, self.model, RoundRow(
                round_id=str(facts["round_id"]), round=int(facts["round"]), state=RoundState.PUBLISHED,
                version=str(facts["version"]), cohort=None, contributors=facts.get("contributors"),
                dropouts=facts.get("dropouts"), seconds=None if seconds is None else float(seconds),
                losses={k: facts.get(k) for k in LOSS_KEYS}, reason=None,
                opened_at=now - float(seconds or 0.0), closed_at=now))
        elif event == "round_discarded":
            self.state.round_closed(fed, str(facts["round_id"]), RoundState.DISCARDED, str(facts["reason"]), now)
        else:
            log.debug("state recorder ignores event %r", event)


class Observers:
    """Fan one orchestrator's events out to several observers; one failing never stops the others (or the round)."""

    def __init__(self, *observers: Any) -> None:
        self.observers = observers

    def round_event(self, event: str, **facts: Any) -> None:
        """Pass the event to every observer, logging (not raising) an observer's failure."""
        for observer in self.observers:
            try:
                observer.round_event(event, **facts)
            except Exception:
                log.exception("observer %s failed on %s", type(observer).__name__, event)


@dataclass(frozen=True)
class Restored:
    """What a restarted orchestrator takes from the state database."""

    history: list[dict[str, Any]]
    sites: list[dict[str, Any]]
    running: bool


def restore(state: StateStore, federation: str, model: str, store: ModelStore,
            clock: Callable[[], float] = time.time) -> Restored:
    """Reconcile the database with the model store, mark unfinished rounds interrupted, load what status needs."""
    now = clock()
    _reconcile_versions(state, federation, model, store, now)
    for row in state.rounds(federation):
        if row.state is RoundState.OPENED:
            state.round_closed(federation, row.round_id, RoundState.INTERRUPTED, INTERRUPTED_REASON, now)
            log.warning("round %d (%s) was interrupted by a coordinator stop; it starts again with fresh keys",
                        row.round, row.round_id)
    sites = [{"site": s.site, "online": False, "num_samples": s.num_samples, "rank": s.rank,
              "last_seen_seconds_ago": round(now - s.last_seen, 1)} for s in state.sites(federation)]
    running = state.running(federation)
    return Restored([r.history_entry() for r in state.rounds(federation)], sites, True if running is None else running)


def _reconcile_versions(state: StateStore, federation: str, model: str, store: ModelStore, now: float) -> None:
    in_store = store.versions(model)
    recorded = state.versions(model)
    for version in in_store:
        if version in recorded:
            continue
        manifest = store.manifest(model, version)
        log.warning("version %s of %s is in the model store but not in the state database; recording it from its "
                    "manifest", version, model)
        state.round_published(federation, model, RoundRow(
            round_id=str(manifest.get("round_id") or f"{version}-from-store"), round=int(manifest["round"]),
            state=RoundState.PUBLISHED, version=version, cohort=manifest.get("cohort"),
            contributors=manifest.get("contributors"), dropouts=manifest.get("dropouts"), seconds=None,
            losses={}, reason=None, opened_at=now, closed_at=now))
    for version in sorted(set(recorded) - set(in_store)):
        log.warning("version %s of %s is recorded but missing from the model store; the store wins", version, model)
        state.forget_version(model, version, federation, now)
