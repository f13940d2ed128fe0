"""Load test: N simulated sites against a real ``fedquilt coordinator serve``.

Each site is the real agent loop with its own certificate and mutual-TLS channel, the real transport
and secure-sum client, around ``standin.StandInTrainer`` (factors of the right shapes at once, no
training). Sites run as threads spread over a few worker processes; the coordinator is its own process,
started exactly as an operator starts it. For every (N, rule) the bench prints seconds per round, the
coordinator's peak RSS and thread count, and the warnings/errors the sites logged; the last line is JSON.

``--drop P``: every site ignores each step it is given (training, layout, each secure-sum stage) with
probability P, independently, and so drops out of that round at that stage (it takes part again in the
next round); the stage deadlines are short (8 s; training 20 s) so a round with a drop moves on. The
table then says how many steps were dropped and how many rounds were discarded.

    OMP_NUM_THREADS=1 nice -n 10 python bench/load.py --sites 10,50,100,200 --rules secure-stack,fedit
    OMP_NUM_THREADS=1 nice -n 10 python bench/load.py --sites 100 --rules secure-stack --rounds 20 \
        --drop 0.01 --out bench/results/load-drops.json
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import tomli_w

SHAPES = {"model.layers.0.self_attn.q_proj": (64, 64), "model.layers.0.self_attn.v_proj": (64, 64)}
FINGERPRINT = "b" * 64
RANK = 4


def _federation(root: Path, n: int, rule: str, rounds: int, drop: float = 0.0) -> Path:
    """CA, one certificate per site, and the coordinator's TOML (all sites in every round)."""
    from fedquilt.coordinator.pki import Role, init_ca, issue

    ca = root / "ca"
    init_ca(ca)
    coord = issue(ca, root / "coordinator", "coordinator", Role.COORDINATOR, hosts=("localhost", "127.0.0.1"))
    for i in range(n):
        issue(ca, root / "sites", f"site-{i:04d}", Role.SITE)
    config = {
        "state_dir": str(root / "state"),
        "tls": {"ca": str(coord.ca), "cert": str(coord.cert), "key": str(coord.key), "crl": str(ca / "crl.pem")},
        "server": {"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0"},
        "federation": {"name": "load", "model": "load", "base_fingerprint": FINGERPRINT, "rule": rule,
                       "rounds": rounds, "min_sites": n, "wait_for_sites": 600.0,
                       "train_timeout": 20.0 if drop else 600.0, "stage_timeout": 8.0 if drop else 600.0, "target_shapes": {k: list(v) for k, v in SHAPES.items()},
                       "train": {"local_steps": 1}},
        "secagg": {"enabled": True},
    }
    path = root / "coordinator.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def _dropping_loop(p: float) -> type:
    """An ``AgentLoop`` that ignores each step with probability ``p`` (seeded per site)."""
    import random

    from fedquilt.agent.loop import AgentLoop
    from fedquilt.proto import federation_pb2 as pb

    class DroppingLoop(AgentLoop):
        dropped = 0
        rng = random.Random(0)  # replaced per site by the worker

        def _handle(self, task: Any) -> None:
            if task.kind != pb.ROUND_DONE and self.rng.random() < p:
                DroppingLoop.dropped += 1
                self.work = None  # out of this round from here on
                return
            super()._handle(task)

    return DroppingLoop


def _sites_worker(address: str, root: str, names: list[str], out: Any, drop: float = 0.0) -> None:
    """One worker process: a thread per site, each a real agent loop; reports what its sites logged."""
    from fedquilt.agent.loop import AgentLoop
    from fedquilt.bench.standin import standin_loop

    loop_class = _dropping_loop(drop) if drop else AgentLoop

    counts: dict[str, int] = {}

    class Count(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            key = f"{record.levelname} {record.name}: {record.getMessage()[:80]}"
            counts[key] = counts.get(key, 0) + 1

    logging.getLogger().addHandler(Count(level=logging.WARNING))
    ca = (Path(root) / "ca" / "ca.pem").read_bytes()
    failures: list[str] = []

    def serve(i: int, name: str) -> None:
        folder = Path(root) / "sites"
        try:
            loop = standin_loop(address, ca, (folder / f"{name}.pem").read_bytes(), (folder / f"{name}.key").read_bytes(),
                                shapes=SHAPES, fingerprint=FINGERPRINT, state_dir=Path(root) / "agents" / name,
                                rank=RANK, seed=i, n=10 + i % 7, give_up_after=120.0, loop_class=loop_class)
            loop.rng = random.Random(i)  # type: ignore[attr-defined]
            loop.run()
        except Exception as exc:  # reported, not raised: the bench counts them
            failures.append(f"{name}: {type(exc).__name__}: {str(exc)[:120]}")

    threads = [threading.Thread(target=serve, args=(i, n), daemon=True) for i, n in enumerate(names)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put({"failures": failures, "logged": counts, "dropped_steps": getattr(loop_class, "dropped", 0)})


def _proc_status(pid: int) -> tuple[float, int]:
    rss, threads = 0.0, 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    except OSError:
        pass
    return rss, threads


def _status(state: Path) -> dict[str, Any] | None:
    try:
        port = int((state / "status.port").read_text())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json", timeout=5) as r:
            return dict(json.loads(r.read()))
    except (OSError, ValueError):
        return None


def run_one(n: int, rule: str, rounds: int, procs: int, timeout: float, drop: float = 0.0) -> dict[str, Any]:
    """One federation of ``n`` stand-in sites for ``rounds`` rounds of ``rule``; its measurements."""
    with tempfile.TemporaryDirectory(prefix=f"load-{n}-") as tmp:
        root = Path(tmp)
        started = time.monotonic()
        config = _federation(root, n, rule, rounds, drop)
        setup = time.monotonic() - started
        state = Path(tomllib.loads(config.read_text())["state_dir"])
        env = dict(os.environ, OMP_NUM_THREADS="1")
        log = (root / "coordinator.log").open("wb")
        coord = subprocess.Popen([sys.executable, "-m", "fedquilt.cli.main", "coordinator", "serve", "--exit-when-done",
                                  "--config", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env)
        result: dict[str, Any] = {"sites": n, "rule": rule, "rounds_planned": rounds, "drop_per_step": drop,
                                  "setup_seconds": round(setup, 1)}
        try:
            while not (state / "coordinator.port").exists():
                if coord.poll() is not None:
                    raise RuntimeError((root / "coordinator.log").read_text()[-2000:])
                time.sleep(0.1)
            address = f"127.0.0.1:{int((state / 'coordinator.port').read_text())}"
            idle_rss, _ = _proc_status(coord.pid)
            ctx = mp.get_context("spawn")
            queue = ctx.Queue()
            names = [f"site-{i:04d}" for i in range(n)]
            workers = [ctx.Process(target=_sites_worker, args=(address, str(root), names[k::procs], queue, drop))
                       for k in range(min(procs, n))]
            begun = time.monotonic()
            for w in workers:
                w.start()
            peak_rss, peak_threads, status = idle_rss, 0, None
            while coord.poll() is None and time.monotonic() - begun < timeout:
                rss, threads = _proc_status(coord.pid)
                peak_rss, peak_threads = max(peak_rss, rss), max(peak_threads, threads)
                status = _status(state) or status
                time.sleep(0.5)
            reports = []
            for _ in workers:
                try:
                    reports.append(queue.get(timeout=150))
                except Exception:
                    reports.append({"failures": ["worker reported nothing"], "logged": {}})
            for w in workers:
                w.join(timeout=10)
                if w.is_alive():
                    w.kill()
            history = (status or {}).get("history", [])
            logged: dict[str, int] = {}
            for rep in reports:
                for k, v in rep["logged"].items():
                    logged[k] = logged.get(k, 0) + v
            result.update({
                "completed": sum(1 for h in history if h.get("version")),
                "contributors": [h.get("contributors") for h in history if h.get("version")],
                "dropped_steps": sum(int(rep.get("dropped_steps", 0)) for rep in reports),
                "discarded": [h.get("discarded") for h in history if not h.get("version")],
                "seconds_per_round": [h.get("seconds") for h in history if h.get("version")],
                "wall_seconds": round(time.monotonic() - begun, 1),
                "coordinator_idle_rss_mib": round(idle_rss), "coordinator_peak_rss_mib": round(peak_rss),
                "coordinator_peak_threads": peak_threads,
                "site_failures": [f for rep in reports for f in rep["failures"]][:10],
                "site_warnings": sum(logged.values()),
                "site_warning_kinds": dict(sorted(logged.items(), key=lambda kv: -kv[1])[:5]),
            })
        finally:
            if coord.poll() is None:
                coord.terminate()
                try:
                    coord.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    coord.kill()
            log.close()
        return result


def main() -> None:
    """Run every (N, rule) and print a table, then the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", default="10,50,100,200")
    parser.add_argument("--rules", default="secure-stack,fedit")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--procs", type=int, default=4, help="worker processes the sites are spread over")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per (N, rule) before giving up")
    parser.add_argument("--drop", type=float, default=0.0, help="probability that a site ignores each step it is given")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "load.json")
    args = parser.parse_args()
    results = []
    print(f"{'sites':>5} {'rule':<13} {'done':>4} {'s/round':<16} {'peak RSS':>9} {'threads':>7} {'warn':>5} failures")
    for n in [int(x) for x in args.sites.split(",")]:
        for rule in args.rules.split(","):
            r = run_one(n, rule, args.rounds, args.procs, args.timeout, args.drop)
            results.append(r)
            print(f"{n:>5} {rule:<13} {r.get('completed', 0):>4} {str(r.get('seconds_per_round')):<16} "
                  f"{r.get('coordinator_peak_rss_mib', 0):>6} MiB {r.get('coordinator_peak_threads', 0):>7} "
                  f"{r.get('site_warnings', 0):>5} {len(r.get('site_failures', []))}"
                  + (f"  dropped steps {r.get('dropped_steps')}, discarded rounds {len(r.get('discarded', []))}"
                     if args.drop else ""), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
