"""Secure aggregation over mTLS gRPC with agent processes killed mid-sum.

Five agent processes; threshold 3. One is frozen (SIGSTOP) before it can send its masked input
and then killed; another is killed right after its masked input reached the coordinator (before it
could reveal shares). The round still publishes, and the published adapter equals the plaintext
FedIT aggregate of exactly the sites whose masked inputs arrived, within quantization.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fedquilt.cli.federation_files import point_agents_at
from fedquilt.proto import codec
from fedquilt.strategies.adapters import load_peft

pytestmark = pytest.mark.slow


def _spawn(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.Popen([sys.executable, "-m", "fedquilt.cli.main", "agent", "run", "--no-progress", "--config",
                             str(cfg)], stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)


def test_round_survives_sites_killed_before_and_after_masked_input(federation, tmp_path: Path) -> None:
    fed = federation(sites=5, secagg=True, rounds=1, min_sites=5, min_contributors=3, keep_submissions=True,
                     secagg_options={"threshold": 3}, timeouts=(240.0, 12.0),
                     train={"local_steps": 2, "batch_size": 8, "lr": 3e-3})
    point_agents_at(fed.files, fed.address)
    procs = [_spawn(cfg, tmp_path / f"agent-{i}.log") for i, cfg in enumerate(fed.files.agent_configs)]
    started = time.monotonic()
    orch = fed.running.orchestrator
    try:
        def secure_sum():
            rnd = orch.current
            return None if rnd is None else getattr(rnd, "collector", None)

        # Freeze site-4 once it has sent its shares: it can never send its masked input.
        _wait(lambda: (s := secure_sum()) is not None and s.stage.value == "SECAGG_SHARE" and "site-4" in s.heard,
              300, "site-4 never shared its keys")
        os.kill(procs[4].pid, signal.SIGSTOP)
        # Kill site-3 as soon as its masked input is in the running sum: it can never reveal shares.
        _wait(lambda: (s := secure_sum()) is not None and s.stage.value == "SECAGG_MASKED" and "site-3" in s.heard,
              60, "site-3's masked input never arrived")
        procs[3].kill()
        _wait(orch.finished, 120, f"round did not publish: {orch.status()['history']}")
        print(f"federation finished after {time.monotonic() - started:.1f}s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()

    history = orch.status()["history"]
    assert history[-1]["version"] == "v0001", history
    manifest = fed.running.store.manifest(fed.files.model, "v0001")
    assert manifest["secure_aggregation"]["dropped"] == ["site-4"]
    assert manifest["contributors"] == 4  # site-3's input counts: its self mask was rebuilt from shares

    # Plaintext reference: FedIT of the four sites' submitted vectors (each kept by its own agent).
    sums: dict[str, np.ndarray] = {}
    for i in range(4):
        files = list((fed.files.agent_configs[i].parent / "state" / "submissions").glob("*-phase0.safetensors"))
        assert len(files) == 1
        for k, v in codec.decode_tensors(files[0].read_bytes()).items():
            sums[k] = sums.get(k, 0) + v.astype(np.float64)
    n_total = float(sums.pop("__n__")[0])
    store = fed.running.store
    pulled = tmp_path / "pulled"
    pulled.mkdir()
    for name in manifest["files"]:
        (pulled / name).write_bytes(store.read(fed.files.model, "v0001", name))
    published = load_peft(pulled)
    checked = 0
    for module, f in published.items():
        ref_a = torch.from_numpy(sums[f"{module}/A"] / n_total)
        ref_b = torch.from_numpy(sums[f"{module}/B"] / n_total)
        assert torch.allclose(f.A.double(), ref_a, atol=1e-5), module
        assert torch.allclose(f.B.double(), ref_b, atol=1e-5), module
        checked += 1
    assert checked == len(published) > 0
