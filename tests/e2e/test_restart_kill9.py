"""The coordinator survives kill -9 in the middle of a secure sum.

A coordinator process and three agent processes run three FedIT rounds with secure aggregation.
While round 2's secure sum is in flight the coordinator gets SIGKILL and is started again with the
same configuration. The agents find it by themselves (their transport retries UNAVAILABLE and says
Hello again), round 2 starts over with a fresh nonce (so fresh SecAgg keys), and the federation
finishes. Afterwards every version verifies against its signed manifest, the store holds no
half-written file, and the state database shows the interrupted attempt and three published rounds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest

from fedquilt.cli.federation_files import FederationFiles, point_agents_at, write_federation
from fedquilt.coordinator import manifest as manifests
from fedquilt.coordinator.registry import FileModelStore

pytestmark = pytest.mark.slow
ENV = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "fedquilt.cli.main", *args], stdout=log.open("ab"),
                            stderr=subprocess.STDOUT, env=ENV)


def _coordinator(files: FederationFiles, log: Path) -> subprocess.Popen[bytes]:
    return _spawn(["coordinator", "serve", "--exit-when-done", "--config", str(files.coordinator_config)], log)


def _wait(cond: Callable[[], Any], timeout: float, what: Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        if time.monotonic() > deadline:
            raise TimeoutError(what())
        time.sleep(0.02)
    return value


def _status(state_dir: Path) -> dict[str, Any] | None:
    try:
        port = int((state_dir / "status.port").read_text())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json", timeout=10) as r:
            return dict(json.loads(r.read()))
    except (OSError, ValueError):
        return None


def _tails(logs: list[Path]) -> str:
    return "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-25:]) for p in logs)


def test_federation_finishes_after_coordinator_kill9_mid_secure_sum(workspace_factory: Any, tmp_path: Path) -> None:
    port = _free_port()
    files = write_federation(tmp_path / "fed", workspace_factory(3), rounds=3, secagg=True, listen=f"127.0.0.1:{port}",
                             timeouts=(120.0, 10.0), train={"local_steps": 4, "batch_size": 8, "lr": 3e-3})
    point_agents_at(files, f"127.0.0.1:{port}")
    logs = [tmp_path / "coordinator.log"] + [tmp_path / f"agent-{i}.log" for i in range(3)]
    started = time.monotonic()
    coord = _coordinator(files, logs[0])
    agents = [_spawn(["agent", "run", "--no-progress", "--config", str(cfg)], logs[i + 1])
              for i, cfg in enumerate(files.agent_configs)]
    models = files.state_dir / "store" / "models" / files.model
    try:
        # Round 2 in flight, inside its secure sum (v0001 published, v0002 not yet).
        in_sum = _wait(lambda: (s := _status(files.state_dir)) is not None and (c := s["current_round"]) is not None
                       and c["round"] == 2 and c["stage"] == "phase" and c,
                       300, lambda: "round 2 never reached its secure sum\n" + _tails(logs))
        coord.send_signal(signal.SIGKILL)
        coord.wait(10)
        killed_at = time.monotonic()
        assert (models / "v0001.json").exists() and not (models / "v0002.json").exists()
        (files.state_dir / "status.port").unlink()

        coord = _coordinator(files, logs[0])
        assert coord.wait(400 - (time.monotonic() - started)) == 0, _tails(logs)
        for agent in agents:
            assert agent.wait(30) == 0, _tails(logs)
        print(f"killed after {killed_at - started:.1f}s; finished {time.monotonic() - killed_at:.1f}s after the kill")
    finally:
        for p in [coord, *agents]:
            if p.poll() is None:
                p.kill()
            p.wait()

    # Every published version verifies: hashes of its files and the coordinator's signature (CA-issued).
    store = FileModelStore(files.state_dir / "store")
    ca_pem = (files.ca_dir / "ca.pem").read_bytes()
    assert store.versions(files.model) == ["v0001", "v0002", "v0003"]
    assert store.resolve(files.model, "latest") == "v0003"
    for version in store.versions(files.model):
        manifest = store.manifest(files.model, version)
        assert manifests.verify(manifest, ca_pem) == "coordinator"
        blobs = {name: (files.state_dir / "store" / "blobs" / e["sha256"]).read_bytes()
                 for name, e in manifest["files"].items()}
        manifests.check_files(manifest, blobs)
        assert manifest["secure_aggregation"] is not None and manifest["contributors"] >= 2
    # No temp file and no half-written version anywhere in the store.
    assert sorted((files.state_dir / "store").rglob(".*")) == []
    assert sorted(p.name for p in models.iterdir()) == ["tags.json", "v0001.json", "v0002.json", "v0003.json"]

    # The history: round 2's first attempt interrupted, then three published rounds (round 2 with a fresh nonce).
    with sqlite3.connect(str(files.state_dir / "state.db")) as db:
        rows = db.execute("SELECT round, round_id, state, version FROM rounds ORDER BY seq").fetchall()
    assert [(r[0], r[2], r[3]) for r in rows] == [(1, "published", "v0001"), (2, "interrupted", None),
                                                  (2, "published", "v0002"), (3, "published", "v0003")], rows
    assert rows[1][1] == in_sum["id"] != rows[2][1] == store.manifest(files.model, "v0002")["round_id"]
