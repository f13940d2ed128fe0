"""The SQLite state store: schema, WAL mode, recorded events, reload, reconciliation, migration, threads."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from fedquilt.coordinator.config import FederationConfig
from fedquilt.coordinator.orchestrator import Orchestrator
from fedquilt.coordinator.registry import FileModelStore
from fedquilt.coordinator.state import (
    INTERRUPTED_REASON, SCHEMA_VERSION, Observers, RoundState, SqliteStateStore, StateError, StateRecorder, restore,
)
from fedquilt.strategies.registry import make_rule

FED, MODEL = "demo", "demo-adapter"

# The first layout, written out by hand: an independent copy, so a change to the module's DDL cannot
# silently change what "an older database" means in the migration test.
V1_DDL = """
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
INSERT INTO rounds (federation, round_id, round, state, version, cohort, contributors, dropouts, opened_at, closed_at)
    VALUES ('demo', 'r0001-aa', 1, 'published', 'v0001', 3, 3, 0, 10.0, 20.0);
INSERT INTO versions VALUES ('demo-adapter', 'v0001', 1, 'r0001-aa', 20.0);
"""


class Clock:
    """A settable wall clock."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _raw(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(str(path)) as db:
        return list(db.execute(sql, args).fetchall())


def _published(recorder: StateRecorder, number: int, round_id: str, seconds: float = 2.5) -> None:
    recorder.round_event("round_published", round_id=round_id, round=number, version=f"v{number:04d}", contributors=3,
                         dropouts=0, seconds=seconds, loss_before=2.0, loss_after=1.5, eval_loss=None)


def test_schema_and_wal_mode(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    store = SqliteStateStore(db)
    tables = {r[0] for r in _raw(db, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"schema_version", "federations", "sites", "rounds", "versions"} <= tables
    columns = {r[1] for r in _raw(db, "PRAGMA table_info(rounds)")}
    assert {"round_id", "round", "state", "version", "contributors", "dropouts", "seconds", "losses", "reason",
            "opened_at", "closed_at"} <= columns
    assert store.schema_version() == SCHEMA_VERSION == 2
    assert _raw(db, "PRAGMA journal_mode") == [("wal",)]  # persistent: any new connection sees WAL
    assert store._db.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    store.close()


def test_events_are_recorded_and_reload_marks_open_rounds_interrupted(tmp_path: Path) -> None:
    db, clock = tmp_path / "state.db", Clock()
    state = SqliteStateStore(db)
    rec = StateRecorder(state, FED, MODEL, clock=clock)
    rec.round_event("site_enrolled", site="site-0", num_samples=96, rank=4, alpha=16.0)
    clock.t = 1010.0
    rec.round_event("site_enrolled", site="site-0", num_samples=97, rank=8, alpha=16.0)
    rec.round_event("federation_running", running=False)
    rec.round_event("round_opened", round=1, cohort=3, round_id="r0001-a")
    clock.t = 1020.0
    _published(rec, 1, "r0001-a")
    rec.round_event("round_opened", round=2, cohort=3, round_id="r0002-b")
    rec.round_event("round_discarded", round=2, reason="only 1 site finished training", round_id="r0002-b")
    rec.round_event("round_opened", round=2, cohort=3, round_id="r0002-c")  # then the process dies
    rec.round_event("something_new", x=1)  # ignored, not an error
    state.close()

    assert _raw(db, "SELECT site, num_samples, rank, first_seen, last_seen FROM sites") == [("site-0", 97, 8, 1000.0, 1010.0)]
    assert _raw(db, "SELECT name, running FROM federations") == [(FED, 0)]
    assert _raw(db, "SELECT round_id, state, version, seconds, losses FROM rounds ORDER BY seq") == [
        ("r0001-a", "published", "v0001", 2.5, json.dumps({"loss_before": 2.0, "loss_after": 1.5, "eval_loss": None})),
        ("r0002-b", "discarded", None, None, "{}"), ("r0002-c", "opened", None, None, "{}")]
    assert _raw(db, "SELECT model, version, round FROM versions") == [(MODEL, "v0001", 1)]

    store = FileModelStore(tmp_path / "store")
    store.publish(MODEL, "v0001", {"a": b"x"}, {"files": {"a": {"sha256": _sha(b"x"), "size": 1}}, "round": 1})
    state = SqliteStateStore(db)
    clock.t = 2000.0
    restored = restore(state, FED, MODEL, store, clock=clock)
    assert restored.running is False
    assert restored.sites == [{"site": "site-0", "online": False, "num_samples": 97, "rank": 8,
                               "last_seen_seconds_ago": 990.0}]
    assert restored.history == [
        {"round": 1, "version": "v0001", "contributors": 3, "dropouts": 0, "seconds": 2.5, "loss_before": 2.0,
         "loss_after": 1.5, "eval_loss": None},
        {"round": 2, "version": None, "discarded": "only 1 site finished training"},
        {"round": 2, "version": None, "discarded": INTERRUPTED_REASON, "interrupted": True},
    ]
    assert [r.state for r in state.rounds(FED)][-1] is RoundState.INTERRUPTED
    assert restore(state, FED, MODEL, store, clock=clock).history == restored.history  # idempotent
    state.close()


def _sha(b: bytes) -> str:
    import hashlib

    return hashlib.sha256(b).hexdigest()


def test_reconcile_store_wins(tmp_path: Path) -> None:
    """Crash after the store's commit but before the DB write: the round row comes back from the manifest."""
    state, clock = SqliteStateStore(tmp_path / "state.db"), Clock()
    rec = StateRecorder(state, FED, MODEL, clock=clock)
    rec.round_event("round_opened", round=1, cohort=3, round_id="r0001-a")
    _published(rec, 1, "r0001-a")
    rec.round_event("round_opened", round=2, cohort=3, round_id="r0002-b")  # published to the store, then killed
    _published(rec, 3, "r0003-c")  # recorded, but the store lost it (restored from an old backup, say)
    store = FileModelStore(tmp_path / "store")
    for number, rid in ((1, "r0001-a"), (2, "r0002-b")):
        body = f"v{number}".encode()
        store.publish(MODEL, f"v{number:04d}", {"a": body}, {"files": {"a": {"sha256": _sha(body), "size": 2}},
                      "round": number, "round_id": rid, "contributors": 2, "dropouts": 1, "cohort": 3})
    history = restore(state, FED, MODEL, store, clock=clock).history
    assert [(h["round"], h["version"]) for h in history] == [(1, "v0001"), (2, "v0002"), (3, None)]
    assert history[1]["contributors"] == 2 and history[1]["dropouts"] == 1
    assert "does not hold it" in history[2]["discarded"]
    assert state.versions(MODEL) == {"v0001": 1, "v0002": 2}
    rows = {r.round_id: r.state for r in state.rounds(FED)}
    assert rows == {"r0001-a": RoundState.PUBLISHED, "r0002-b": RoundState.PUBLISHED, "r0003-c": RoundState.DISCARDED}
    state.close()


def test_migration_from_schema_version_1_keeps_rows(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(str(db)) as conn:
        conn.executescript(V1_DDL)
    state = SqliteStateStore(db)
    assert state.schema_version() == 2
    (row,) = state.rounds(FED)
    assert (row.round_id, row.state, row.version, row.contributors, row.seconds, row.losses) == \
        ("r0001-aa", RoundState.PUBLISHED, "v0001", 3, None, {})
    assert state.versions(MODEL) == {"v0001": 1}
    state.close()


def test_newer_or_unknown_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    SqliteStateStore(db).close()
    _raw_write(db, "UPDATE schema_version SET version = 99")
    with pytest.raises(StateError, match="schema version 99 is newer"):
        SqliteStateStore(db)
    old = tmp_path / "old.db"
    with sqlite3.connect(str(old)) as conn:
        conn.executescript(V1_DDL)
    with pytest.raises(StateError, match="no migration from schema version 1"):
        SqliteStateStore(old, migrations={2: lambda db: None})
    assert _raw(old, "SELECT version FROM schema_version") == [(1,)]  # the failed migration rolled back


def _raw_write(path: Path, sql: str) -> None:
    with sqlite3.connect(str(path)) as db:
        db.execute(sql)


def test_concurrent_writers_from_threads_and_connections(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    stores = [SqliteStateStore(db), SqliteStateStore(db)]  # two connections, as two processes would have
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            store = stores[i % 2]
            for j in range(40):
                store.round_opened(FED, f"r-{i}-{j}", j, 3, float(j))
                store.round_closed(FED, f"r-{i}-{j}", RoundState.DISCARDED, f"t{i}", float(j))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _raw(db, "SELECT count(*), count(DISTINCT round_id) FROM rounds WHERE state = 'discarded'") == [(320, 320)]
    for s in stores:
        s.close()


def test_fan_out_survives_a_failing_observer() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    class Broken:
        def round_event(self, event: str, **facts: Any) -> None:
            raise RuntimeError("disk full")

    class Good:
        def round_event(self, event: str, **facts: Any) -> None:
            seen.append((event, facts))

    Observers(Broken(), Good()).round_event("round_opened", round=1)
    assert seen == [("round_opened", {"round": 1})]


def test_orchestrator_hooks_write_through_the_recorder(tmp_path: Path) -> None:
    """Enrolment, pause and a discarded round reach the database; a new orchestrator shows them."""
    state, clock, mono = SqliteStateStore(tmp_path / "state.db"), Clock(), Clock(0.0)
    fed = FederationConfig(name=FED, model=MODEL, base_fingerprint="f" * 64, min_sites=2, train_timeout=5.0, seed=0)

    def orchestrator(**kwargs: Any) -> Orchestrator:
        return Orchestrator(rule=make_rule("fedit", {}), fed=fed, secure=False, publisher=lambda *a: "never",
                            glob=None, rounds_done=0, global_version=None, clock=mono,
                            observer=StateRecorder(state, FED, MODEL, clock=clock), **kwargs)

    orch = orchestrator()
    for i in range(2):
        orch.hello(f"site-{i}", 10 + i, 4, 16.0, "f" * 64, "causal-lm", {"m": (8, 8)})  # type: ignore[arg-type]
    orch.tick()
    round_id = orch.status()["current_round"]["id"]
    mono.t = 6.0  # past the training deadline with nobody trained
    orch.tick()
    orch.set_running(False)
    assert _raw(state.path, "SELECT round_id, state FROM rounds") == [(round_id, "discarded")]

    restored = restore(state, FED, MODEL, FileModelStore(tmp_path / "store"), clock=clock)
    again = orchestrator(history=restored.history, known_sites=restored.sites, running=restored.running)
    status = again.status()
    assert status["running"] is False
    assert status["history"] == [{"round": 1, "version": None,
                                  "discarded": "only 0 sites finished training, need 2"}]
    assert [(s["site"], s["online"], s["num_samples"]) for s in status["sites"]] == [("site-0", False, 10),
                                                                                   ("site-1", False, 11)]
    mono.t = 16.0  # a site that has not come back ages on the orchestrator's clock
    assert [s["last_seen_seconds_ago"] for s in again.status()["sites"]] == [10.0, 10.0]
    again.hello("site-1", 11, 4, 16.0, "f" * 64, "causal-lm", {"m": (8, 8)})  # type: ignore[arg-type]
    assert [(s["site"], s["online"], s["last_seen_seconds_ago"]) for s in again.status()["sites"]] == [
        ("site-0", False, 10.0), ("site-1", True, 0.0)]
    state.close()
