"""``fedquilt demo --dp`` as a user runs it: every published manifest carries each site's (ε, δ).

Oracle: Opacus's ``RDPAccountant`` stepped by hand with what the demo configures (σ = 0.6,
δ = 1e-5, 12 local steps of batch 8 per round) and each site's record count read from its JSONL,
so q = 1 / ceil(n / 8) and steps = 12 · round are derived here, not taken from the report.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant

pytestmark = pytest.mark.slow
SIGMA, DELTA, LOCAL_STEPS, BATCH = 0.6, 1e-5, 12, 8  # what cli/demo.py writes for --dp
warnings.filterwarnings("ignore", message=".*Optimal order.*")


def reference_epsilon(q: float, steps: int) -> float:
    acc = RDPAccountant()
    for _ in range(steps):
        acc.step(noise_multiplier=SIGMA, sample_rate=q)
    return float(acc.get_epsilon(delta=DELTA))


def test_demo_dp_publishes_growing_per_site_epsilon(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, "-m", "fedquilt.cli.main", "demo", "--dp", "--workdir", str(tmp_path), "--rounds", "2",
         "--timeout", "300"],
        capture_output=True, text=True, env=env, timeout=420,
    )
    assert proc.returncode == 0, f"demo failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    store = tmp_path / "federation" / "coordinator" / "state" / "store" / "models" / "demo-adapter"
    manifests = [json.loads((store / f"v{k:04d}.json").read_text()) for k in (1, 2)]
    records = {site.name: sum(1 for line in (site / "train.jsonl").read_text().splitlines() if line.strip())
               for site in (tmp_path / "workspace" / "sites").iterdir()}
    eps: list[dict[str, float]] = []
    for k, manifest in enumerate(manifests, start=1):
        privacy = manifest["privacy"]
        assert manifest["round"] == k and len(privacy) == manifest["contributors"] == 3
        for site, report in privacy.items():
            q = 1 / math.ceil(records[site] / BATCH)
            assert report["epsilon"] == pytest.approx(reference_epsilon(q, LOCAL_STEPS * k), rel=1e-9), (k, site)
            assert (report["delta"], report["noise_multiplier"], report["rounds"], report["steps"]) == (
                DELTA, SIGMA, k, LOCAL_STEPS * k)
        eps.append({site: float(r["epsilon"]) for site, r in privacy.items()})
    assert all(eps[1][site] > eps[0][site] for site in eps[0])
    for site in records:  # the ledgers the sites keep agree with what was published
        ledger = json.loads((tmp_path / "federation" / site / "state" / "privacy.json").read_text())
        assert ledger["rounds"] == 2 and sum(n for _, _, n in ledger["history"]) == 2 * LOCAL_STEPS
    assert "per-site privacy (ε, δ)" in proc.stdout
