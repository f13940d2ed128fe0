"""A killed site does not delay the next rounds (issue 15), with agent processes over real mTLS gRPC.

Three agents, ``cohort_size = 2`` with ``over_select = 0.5`` (all three sampled, two needed),
``offline_after = 4`` s and 2 s long polls. After round 1 one agent is SIGKILLed: it turns offline
within a couple of seconds (its poll's RPC is gone), and rounds 2 and 3 take about as long as round
1 instead of the 240 s training timeout a sampled dead site used to cost.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any, Callable

import pytest
import tomli_w

from fedquilt.cli.federation_files import point_agents_at, write_federation
from fedquilt.coordinator import server
from fedquilt.coordinator.config import load_config

pytestmark = pytest.mark.slow


def test_a_killed_agent_does_not_delay_the_next_rounds(workspace_factory: Callable[..., Any], tmp_path: Path) -> None:
    ws = workspace_factory(3, "causal-lm")
    files = write_federation(tmp_path / "fed", ws, rule="fedit", rounds=3, secagg=False, timeouts=(240.0, 30.0),
                             train={"local_steps": 2, "batch_size": 8, "lr": 3e-3})
    cfg = tomllib.loads(files.coordinator_config.read_text())
    cfg["federation"].update(cohort_size=2, over_select=0.5, offline_after=4.0, min_sites=2)
    files.coordinator_config.write_text(tomli_w.dumps(cfg))
    running = server.start(load_config(files.coordinator_config), tick_seconds=0.05)
    # Paused until all three agents are online: two suffice to open a round, and a round opened with only two
    # online has no spare (cohort 2, 2 needed), so a kill would then cost it the training timeout — the case
    # over-selection cannot cover and this test is not about.
    running.orchestrator.set_running(False)
    point_agents_at(files, f"127.0.0.1:{running.port}")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-m", "fedquilt.cli.main", "agent", "run", "--no-progress", "--config",
                               str(c)], stdout=(tmp_path / f"a{i}.log").open("wb"), stderr=subprocess.STDOUT, env=env)
             for i, c in enumerate(files.agent_configs)]
    orch = running.orchestrator

    def published() -> int:
        return sum(1 for h in orch.status()["history"] if h.get("version"))

    def online(site: str) -> bool:
        return any(s["online"] for s in orch.status()["sites"] if s["site"] == site)

    victim = "site-1"

    try:
        deadline = time.monotonic() + 300
        while not all(online(f"site-{i}") for i in range(3)):
            assert time.monotonic() < deadline, orch.status()
            time.sleep(0.1)
        orch.set_running(True)
        while published() < 1:
            assert time.monotonic() < deadline, orch.status()
            time.sleep(0.1)
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait()
        killed = time.monotonic()
        while online(victim):
            assert time.monotonic() - killed < 4.0 + 2 * 2.0 + 2.0, "the dead site still shows online"
            time.sleep(0.1)
        offline_after_s = time.monotonic() - killed
        while published() < 3:
            assert time.monotonic() < deadline, orch.status()
            time.sleep(0.1)
        rounds_after = time.monotonic() - killed
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait()
        running.stop(grace=0.1)
    history = orch.status()["history"]
    print(f"dead site offline after {offline_after_s:.1f}s; rounds 2-3 done {rounds_after:.1f}s after the kill; "
          f"round seconds {[h.get('seconds') for h in history]}")
    assert [h["version"] for h in history] == ["v0001", "v0002", "v0003"], history
    assert all(h["contributors"] >= 2 for h in history)
    assert max(h["seconds"] for h in history[1:]) < 60.0  # not the 240 s training timeout
