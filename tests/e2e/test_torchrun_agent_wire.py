"""Issue 16: a site whose agent runs under ``torchrun --nproc-per-node=2`` (gloo, CPU) takes part in a
secure-stack federation over real mTLS gRPC; only rank 0 opens a connection to the coordinator."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedquilt.cli.federation_files import point_agents_at

pytestmark = pytest.mark.slow


def test_two_process_site_trains_and_only_rank_0_talks_to_the_coordinator(federation, tmp_path: Path) -> None:
    fed = federation(sites=2, rule="secure-stack", rounds=2, min_sites=2,
                     train={"local_steps": 3, "batch_size": 8, "lr": 3e-3})
    point_agents_at(fed.files, fed.address)
    exe = shutil.which("torchrun")
    cmd = [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]
    logs = tmp_path / "torchrun"
    proc = subprocess.Popen(
        [*cmd, "--standalone", "--nproc-per-node=2", "--redirects=3", f"--log-dir={logs}", "-m", "fedquilt.cli.main",
         "agent", "run", "--no-progress", "--config", str(fed.files.agent_configs[0])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        fed.start_agents(which=[1])  # the other site: one process, in a thread
        history = fed.wait_rounds(timeout=300)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out.decode(errors="replace")[-4000:]
    assert [h["version"] for h in history] == ["v0001", "v0002"], history
    per_rank = {p.parent.name: p.read_text() for p in logs.rglob("stderr.log")}
    assert sorted(per_rank) == ["0", "1"], sorted(logs.rglob("*"))
    # rank 0: the agent (enrolled, trained both rounds); rank 1: followed, never opened a channel
    assert per_rank["0"].count("opening the coordinator channel") == 1 and "enrolled as site-0" in per_rank["0"]
    assert per_rank["0"].count("round 2: loss") == 1
    assert "opening the coordinator channel" not in per_rank["1"] and "enrolled" not in per_rank["1"]
    assert "rank 1 of 2: following rank 0 (no coordinator connection)" in per_rank["1"]
    sites = fed.running.orchestrator.status()["sites"]
    print("coordinator sites:", sites if isinstance(sites, int) else len(sites))
