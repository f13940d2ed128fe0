"""Issue 16: agents as processes in a 3-round secure-stack federation over real mTLS gRPC and SecAgg hold no
second copy of the base: each agent's peak RSS (VmHWM) stays within 10 % of "base + one training step"."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fedquilt.cli.federation_files import point_agents_at, write_federation
from fedquilt.coordinator import server
from fedquilt.coordinator.config import load_config

pytestmark = pytest.mark.slow
AGENT_TESTS = Path(__file__).parents[1] / "agent"
sys.path.insert(0, str(AGENT_TESTS))
from stacking_rounds import big_model  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _vm_hwm_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def test_agents_peak_within_ten_percent_of_base_plus_one_step(workspace_factory: Any, tmp_path: Path) -> None:
    tiny = workspace_factory(2)
    model = big_model(tiny.model_dir, tmp_path / "big")
    ws = dataclasses.replace(tiny, model_dir=model)
    baseline_proc = subprocess.run(
        [sys.executable, str(AGENT_TESTS / "stacking_rounds.py"), str(model), str(ws.sites[0].train),
         str(ws.sites[1].train), "--out", str(tmp_path / "baseline"), "--baseline"],
        capture_output=True, text=True, timeout=300, env=ENV)
    assert baseline_proc.returncode == 0, baseline_proc.stderr[-3000:]
    baseline = float(json.loads(baseline_proc.stdout.strip().splitlines()[-1])["base_and_one_step_mib"])

    files = write_federation(tmp_path / "fed", ws, rule="secure-stack", rounds=3, min_sites=2,
                             train={"local_steps": 3, "batch_size": 8, "lr": 3e-3})
    running = server.start(load_config(files.coordinator_config), tick_seconds=0.05)
    try:
        point_agents_at(files, f"127.0.0.1:{running.port}")
        logs = [tmp_path / f"agent-{i}.log" for i in range(2)]
        agents = [subprocess.Popen([sys.executable, "-m", "fedquilt.cli.main", "agent", "run", "--no-progress",
                                    "--config", str(cfg)], stdout=logs[i].open("wb"), stderr=subprocess.STDOUT, env=ENV)
                  for i, cfg in enumerate(files.agent_configs)]
        peaks = [0.0, 0.0]
        deadline = time.monotonic() + 400
        while any(a.poll() is None for a in agents):
            assert time.monotonic() < deadline, "\n".join(p.read_text()[-2000:] for p in logs)
            for i, a in enumerate(agents):
                hwm = _vm_hwm_mib(a.pid) if a.poll() is None else None
                peaks[i] = max(peaks[i], hwm or 0.0)
            time.sleep(0.1)
        assert [a.returncode for a in agents] == [0, 0], "\n".join(p.read_text()[-2000:] for p in logs)
        history = running.orchestrator.status()["history"]
    finally:
        running.stop(grace=0.1)
    assert [h["version"] for h in history] == ["v0001", "v0002", "v0003"], history
    ratios = [p / baseline for p in peaks]
    print(f"base + one step {baseline:.0f} MiB; agent peaks {[round(p) for p in peaks]} MiB = "
          f"{[round(r, 3) for r in ratios]} x")
    assert all(r <= 1.10 for r in ratios), (peaks, baseline)
