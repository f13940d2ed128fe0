"""``fedquilt demo`` as a user runs it: separate processes, secure stacking by default, 3 rounds.

While it runs, the coordinator's metrics endpoint is scraped like ``curl`` would; afterwards the
workdir holds every version with its manifest, and the training loss went down round by round.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fedquilt.coordinator import manifest as manifests

pytestmark = pytest.mark.slow


def test_demo_runs_secure_stack_publishes_and_exposes_metrics(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    proc = subprocess.Popen([sys.executable, "-m", "fedquilt.cli.main", "demo", "--workdir", str(workdir), "--rounds", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    state = workdir / "federation" / "coordinator" / "state"
    scraped = ""
    deadline = time.monotonic() + 400
    while proc.poll() is None and time.monotonic() < deadline:
        port_file = state / "status.port"
        if port_file.exists() and (state / "store" / "models" / "demo-adapter" / "v0001.json").exists():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port_file.read_text()}/metrics", timeout=5) as r:
                    scraped = r.read().decode()
            except OSError:
                pass
            if "fedquilt_rounds_published_total" in scraped:
                break
        time.sleep(0.5)
    out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    published = [line for line in scraped.splitlines() if line.startswith("fedquilt_rounds_published_total")]
    assert published and float(published[0].split()[-1]) >= 1, scraped[:2000]

    models = state / "store" / "models" / "demo-adapter"
    ca = (workdir / "federation" / "ca" / "ca.pem").read_bytes()
    for version in ("v0001", "v0002", "v0003"):
        manifest = json.loads((models / f"{version}.json").read_text())
        assert manifests.verify(manifest, ca) == "coordinator"
        assert manifest["rule"] == "secure-stack" and manifest["contributors"] == 3
        assert manifest["secure_aggregation"]["protocol"] == "SecAgg"
    summary = json.loads((workdir / "summary.json").read_text())
    losses = [h["loss_before"] for h in summary["history"] if h.get("version")]
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2], losses
    assert summary["peft_matches_manual_merge"] and summary["max_logit_change"] > 0
    assert (workdir / "pulled" / "adapter_model.safetensors").exists()
