"""Secure stacking at the math level: traffic, time and exactness against plaintext stacking and
a secure sum of dense updates (no networking, no masking: the lead wires SecAgg in later).

Llama-2-7B q,v-shaped adapters (64 matrices of 4096×4096), 10 sites, rank 16 everywhere and
mixed ranks 4..32. ``--quick``: 8 matrices of 512×512. For each rule: values each site sends
and receives, counted at 4 bytes per value as in the uint32 ring (receive = in-round broadcasts
+ the published update it downloads next round), mean site compute time per round, coordinator
time, and the relative error ‖ΔW − Σ p_i s_i B_i A_i‖_F / ‖Σ p_i s_i B_i A_i‖_F (full run: on
every 8th matrix, the dense reference being 134 MB per matrix). Modules are processed in blocks;
times add up over blocks. Prints a table, then one JSON line; writes bench/results/secure_stack.json.
"""

from __future__ import annotations

import argparse
import zlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aggregate import ALPHA, plain_sum
from fedquilt.strategies.base import Aggregate, LocalUpdate, RoundContext
from fedquilt.strategies.lora import Adapter, LoraFactors, lora_scaling
from fedquilt.strategies.registry import make_rule

BYTES = 4
RULES = ["stack", "secure-stack", "dense"]


def site_adapter(site: int, modules: list[str], d: int, k: int, rank: int) -> Adapter:
    """Deterministic random trained factors of one site (per module, independent of blocking)."""
    out = {}
    for m in modules:
        gen = torch.Generator().manual_seed(zlib.crc32(f"{site}|{m}".encode()))
        out[m] = LoraFactors(A=torch.randn(rank, k, generator=gen) / k**0.5, B=torch.randn(d, rank, generator=gen) / 10,
                             scaling=lora_scaling(ALPHA, rank))
    return out


def exact(sites: list[Adapter], p: list[float], m: str) -> torch.Tensor:
    """Σ p_i s_i B_i A_i in float64."""
    return sum(pi * ad[m].scaling * (ad[m].B.double() @ ad[m].A.double()) for pi, ad in zip(p, sites))  # type: ignore[return-value]


def run_block(name: str, modules: list[str], d: int, ranks: list[int], checked: set[str]) -> dict[str, Any]:
    """One block of modules through client halves, plain sum and server halves."""
    ctx = RoundContext(round=1, shapes={m: (d, d) for m in modules}, ranks={f"s{i}": r for i, r in enumerate(ranks)}, session=b"bench")
    rule: Any = make_rule(name, {})
    counts = [100 + 10 * i for i in range(len(ranks))]
    p = [c / sum(counts) for c in counts]
    sites = [site_adapter(i, modules, d, d, r) for i, r in enumerate(ranks)]
    sent = np.zeros(len(ranks))
    received = 0.0
    site_t = np.zeros(len(ranks))
    server_t = 0.0
    if name == "stack":
        subs = {}
        for i, ad in enumerate(sites):
            t0 = time.perf_counter()
            subs[f"s{i}"] = rule.vectors(LocalUpdate(adapter=ad), counts[i], ctx)
            site_t[i] += time.perf_counter() - t0
            sent[i] += sum(v.size for v in subs[f"s{i}"].values())
        t0 = time.perf_counter()
        agg = rule.combine_individual(subs, ctx, None)
        server_t += time.perf_counter() - t0
    else:
        broadcast = None
        for phase in range(rule.phases):
            acc = None
            for i, ad in enumerate(sites):
                upd = LocalUpdate(dense={m: f.scaling * (f.B @ f.A) for m, f in ad.items()}) if name == "dense" else LocalUpdate(adapter=ad)
                t0 = time.perf_counter()
                v = rule.vectors(phase, upd, counts[i], ctx, broadcast, state={})
                site_t[i] += time.perf_counter() - t0
                sent[i] += sum(x.size for x in v.values())
                acc = plain_sum(acc, v)
                del upd, v
            t0 = time.perf_counter()
            out = rule.combine(phase, acc, ctx, None, broadcast)
            server_t += time.perf_counter() - t0
            if isinstance(out, Aggregate):
                agg = out
            else:
                broadcast = out
                received += sum(x.size for x in out.tensors.values())
    if agg.adapter is not None:
        received += sum(f.A.numel() + f.B.numel() for f in agg.adapter.values())
        deltas = {m: agg.adapter[m].delta() for m in modules if m in checked}
    else:
        received += sum(w.numel() for w in agg.dense.values())
        deltas = {m: agg.dense[m].double() for m in modules if m in checked}
    num = den = 0.0
    for m, got in deltas.items():
        want = exact(sites, p, m)
        num += float(((got - want) ** 2).sum())
        den += float((want**2).sum())
    return {"sent": sent, "received": received, "site_t": site_t, "server_t": server_t, "num": num, "den": den}


def run(name: str, modules: list[str], d: int, ranks: list[int], block: int, checked: set[str]) -> dict[str, float]:
    """A whole rule over every block."""
    tot: dict[str, Any] = {"sent": 0.0, "received": 0.0, "site_t": 0.0, "server_t": 0.0, "num": 0.0, "den": 0.0}
    for i in range(0, len(modules), block):
        r = run_block(name, modules[i : i + block], d, ranks, checked)
        for k in tot:
            tot[k] = tot[k] + r[k]
    return {
        "site_sends_mb_max": round(float(np.max(tot["sent"])) * BYTES / 2**20, 2),
        "site_sends_mb_mean": round(float(np.mean(tot["sent"])) * BYTES / 2**20, 2),
        "site_receives_mb": round(float(tot["received"]) * BYTES / 2**20, 2),
        "site_seconds_mean": round(float(np.mean(tot["site_t"])), 3),
        "coordinator_seconds": round(float(tot["server_t"]), 3),
        "relative_error": float((tot["num"] / tot["den"]) ** 0.5) if tot["den"] > 0 else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 matrices of 512×512 (< 1 minute)")
    args = ap.parse_args()
    n_mod, d, block, every = (8, 512, 8, 1) if args.quick else (64, 4096, 4, 8)
    modules = [f"model.layers.{i // 2}.self_attn.{'qv'[i % 2]}_proj" for i in range(n_mod)]
    checked = set(modules[::every])
    configs = {"r16": [16] * 10, "mixed4-32": [4, 8, 8, 16, 16, 16, 24, 24, 32, 32]}
    results: dict[str, dict[str, dict[str, float]]] = {}
    for cname, ranks in configs.items():
        results[cname] = {}
        for name in RULES:
            results[cname][name] = run(name, modules, d, ranks, block, checked)
            print(f"  done {cname} {name}", flush=True)
    print(f"\nsecure stacking, math level: {n_mod} matrices {d}x{d}, 10 sites, 4 bytes/value")
    head = f"{'ranks':<11}{'rule':<14}{'send MB':>9}{'recv MB':>9}{'site s':>8}{'coord s':>9}{'rel err':>10}"
    print(head)
    for cname, rows in results.items():
        for name, r in rows.items():
            print(f"{cname:<11}{name:<14}{r['site_sends_mb_max']:>9.1f}{r['site_receives_mb']:>9.1f}"
                  f"{r['site_seconds_mean']:>8.2f}{r['coordinator_seconds']:>9.2f}{r['relative_error']:>10.2e}")
    doc = {"bench": "secure_stack", "config": {"matrices": n_mod, "d": d, "k": d, "sites": 10, "quick": args.quick,
           "ranks": configs, "error_on_matrices": len(checked), "bytes_per_value": BYTES}, "rules": RULES, "results": results}
    out = Path(__file__).resolve().parent / "results" / "secure_stack.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
