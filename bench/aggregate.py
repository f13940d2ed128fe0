"""Server-side aggregation cost of every rule on Llama-2-7B q,v-shaped adapters.

Full run: 64 target matrices of 4096×4096 (32 layers × q,v), rank 16, 10 sites. ``--quick``:
8 matrices of 512×512. Client halves run first (untimed) and their vectors are summed in plain
numpy (the secure sum's oracle); then the rule's server half is timed and its peak resident
memory above the pre-call level sampled with psutil (numpy and torch allocations alike). The
naive dense reference materialises Σ p_i s_i B_i A_i per site. ``dense`` and the naive reference
are run in blocks of modules (their float64 sums would not fit otherwise): times add up over
blocks, memory is the largest block's. Prints a table, then one JSON line; writes
bench/results/aggregate.json.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import psutil
import torch

from fedquilt.strategies.base import Aggregate, LocalUpdate, RoundContext
from fedquilt.strategies.lora import Adapter, LoraFactors, lora_scaling
from fedquilt.strategies.registry import RULES, make_rule

ALPHA = 32.0


class PeakRss:
    """Samples this process's RSS in a thread; ``peak_mb`` is the maximum above the start."""

    def __init__(self, interval: float = 0.005) -> None:
        self.proc, self.interval = psutil.Process(), interval
        self.base = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRss":
        self.base = self.peak = self.proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def peak_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def measure(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, seconds, peak MB above the start) of ``fn()``."""
    with PeakRss() as mem:
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
    return out, dt, mem.peak_mb


def site_adapter(site: int, modules: list[str], d: int, k: int, rank: int) -> Adapter:
    """Deterministic random trained factors of one site."""
    gen = torch.Generator().manual_seed(1000 + site)
    s = lora_scaling(ALPHA, rank)
    return {m: LoraFactors(A=torch.randn(rank, k, generator=gen) / k**0.5, B=torch.randn(d, rank, generator=gen) / 10, scaling=s) for m in modules}


def plain_sum(acc: dict[str, np.ndarray] | None, v: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add one site's vectors into the float64 accumulator (in place)."""
    if acc is None:
        return {k: np.asarray(x, dtype=np.float64).copy() for k, x in v.items()}
    for k, x in v.items():
        acc[k] += x
    return acc


def server_cost(name: str, modules: list[str], d: int, k: int, ranks: list[int]) -> tuple[float, float]:
    """(seconds, peak MB) of ``name``'s server half over ``modules``."""
    ctx = RoundContext(round=1, shapes={m: (d, k) for m in modules}, ranks={f"s{i}": r for i, r in enumerate(ranks)}, session=b"bench")
    rule: Any = make_rule(name, {})
    counts = [100 + 10 * i for i in range(len(ranks))]
    if not RULES[name].sums_only:
        subs = {f"s{i}": rule.vectors(LocalUpdate(adapter=site_adapter(i, modules, d, k, r)), counts[i], ctx) for i, r in enumerate(ranks)}
        _, dt, mb = measure(lambda: rule.combine_individual(subs, ctx, None))
        return dt, mb
    total_t, peak, broadcast = 0.0, 0.0, None
    for phase in range(rule.phases):
        acc: dict[str, np.ndarray] | None = None
        for i, r in enumerate(ranks):
            ad = site_adapter(i, modules, d, k, r)
            upd = LocalUpdate(dense={m: f.scaling * (f.B @ f.A) for m, f in ad.items()}) if name == "dense" else LocalUpdate(adapter=ad)
            acc = plain_sum(acc, rule.vectors(phase, upd, counts[i], ctx, broadcast, state={}))
            del upd, ad
        sums = acc
        out, dt, mb = measure(lambda: rule.combine(phase, sums, ctx, None, broadcast))
        total_t, peak = total_t + dt, max(peak, mb)
        broadcast = None if isinstance(out, Aggregate) else out
        del acc, sums
    return total_t, peak


def naive_cost(modules: list[str], d: int, k: int, ranks: list[int]) -> tuple[float, float]:
    """(seconds, peak MB) of materialising Σ p_i s_i B_i A_i per site in float64."""
    sites = [site_adapter(i, modules, d, k, r) for i, r in enumerate(ranks)]
    counts = [100 + 10 * i for i in range(len(ranks))]
    p = [c / sum(counts) for c in counts]

    def run() -> dict[str, torch.Tensor]:
        out = {}
        for m in modules:
            acc = torch.zeros(d, k, dtype=torch.float64)
            for pi, ad in zip(p, sites):
                f = ad[m]
                acc += (pi * f.scaling) * (f.B.double() @ f.A.double())
            out[m] = acc.float()
        return out

    _, dt, mb = measure(run)
    return dt, mb


def blocked(fn: Callable[[list[str]], tuple[float, float]], modules: list[str], block: int) -> tuple[float, float]:
    """Run ``fn`` over blocks of modules: total time, largest peak."""
    t, mb = 0.0, 0.0
    for i in range(0, len(modules), block):
        dt, m = fn(modules[i : i + block])
        t, mb = t + dt, max(mb, m)
    return t, mb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 matrices of 512×512 (< 1 minute)")
    args = ap.parse_args()
    n_mod, d, block = (8, 512, 8) if args.quick else (64, 4096, 4)
    modules = [f"model.layers.{i // 2}.self_attn.{'qv'[i % 2]}_proj" for i in range(n_mod)]
    ranks = [16] * 10
    torch.set_num_threads(max(1, psutil.cpu_count() or 1))
    results: dict[str, dict[str, float]] = {}
    t_start = time.perf_counter()
    for name in RULES:
        if name == "dense":
            dt, mb = blocked(lambda ms: server_cost("dense", ms, d, d, ranks), modules, block)
        else:
            dt, mb = server_cost(name, modules, d, d, ranks)
        results[name] = {"server_seconds": round(dt, 4), "server_peak_mb": round(mb, 1)}
        print(f"  done {name} ({time.perf_counter() - t_start:.0f}s)", flush=True)
    dt, mb = blocked(lambda ms: naive_cost(ms, d, d, ranks), modules, block)
    results["naive-dense-reference"] = {"server_seconds": round(dt, 4), "server_peak_mb": round(mb, 1)}
    config = {"matrices": n_mod, "d": d, "k": d, "rank": 16, "sites": 10, "quick": args.quick,
              "threads": torch.get_num_threads(), "blocked": ["dense", "naive-dense-reference"], "block": block}
    print(f"\nserver-side aggregation: {n_mod} matrices {d}x{d}, r=16, 10 sites")
    print(f"{'rule':<24}{'seconds':>10}{'peak MB':>10}")
    for name, r in results.items():
        print(f"{name:<24}{r['server_seconds']:>10.3f}{r['server_peak_mb']:>10.1f}")
    doc = {"bench": "aggregate", "config": config, "rules": results}
    out = Path(__file__).resolve().parent / "results" / "aggregate.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
