"""How rounds scale with the cohort and with the number of rounds (issue 15), computed, not on the wire.

1. Cohort sweep, Llama-2-7B q,v shapes (64 matrices of 4096×4096), r = 16 at every site, N = 10 … 1,000:
   values each site uploads and downloads per round for every rule, from the rules' own client halves
   (one 4096×4096 module's real vectors, ×64), at 4 bytes per value (uint32 ring) and 8 for float64
   broadcasts; the downloaded global at its steady-state rank (64 when capped; after round 2, 2·N·r, for
   the old uncapped default); coordinator seconds per round of the rule's server half (one module timed, ×64; the
   secure sum's own unmasking cost is bench/secagg.py's). "dense-secagg" is a secure sum of dense ΔW.
2. Accuracy at small shapes (16 matrices of 256×256; synthetic updates whose sites share a decaying
   spectrum plus site-specific noise, N = 10 … 1,000): relative error of secure-stack's round update vs
   the exact stacked Σ p_i s_i B_i A_i, for the capped single-pass (default) and two-pass sketches, next
   to the best rank-(w − oversampling) error, and the probe estimate the manifest reports.
3. Rounds 1 … 50 (same small shapes, 20 sites per round): published rank and adapter bytes, and the
   published state's relative error vs the exact cumulative update, for the old default (numerical
   rank, unbounded) and the capped default with and without error feedback.
4. Drops: probability that a round publishes with N sites and 1 % drops per stage (analytic; the
   in-memory SecAgg simulation is tests/secure_agg/test_secure_stack_drops.py).

5. With ``--loopback 100,200,500``: wall seconds per round on loopback, measured — a real
   ``fedquilt coordinator serve`` process and N stand-in sites (the real agent loop, mTLS channel and
   secure-sum client each, no training) from ``bench/load.py``, for secure-stack and fedit. Minutes
   per N; off by default.

``--quick`` shrinks every sweep. Prints tables; writes bench/results/scale.json and, with matplotlib,
docs/scale.png.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedquilt.strategies.base import Aggregate, Broadcast, LocalUpdate, RoundContext
from fedquilt.strategies.lora import LoraFactors, lora_scaling
from fedquilt.strategies.registry import make_rule

ALPHA, RANK, LAYERS = 16.0, 16, 32
RULES: dict[str, tuple[str, dict[str, Any]]] = {
    "fedit": ("fedit", {}), "ffa": ("ffa", {}), "rotalign": ("rotalign", {}), "alora": ("alora", {}),
    "flexlora": ("flexlora", {}),
    "secure-stack": ("secure-stack", {}),
    "secure-stack 2-pass capped": ("secure-stack", {"passes": 2}),
    "secure-stack old (2-pass, uncapped)": ("secure-stack", {"passes": 2, "max_width": 0, "numerical_rank": True}),
}


def factors(d: int, k: int, r: int, seed: int) -> LoraFactors:
    gen = torch.Generator().manual_seed(seed)
    return LoraFactors(A=torch.randn(r, k, generator=gen) / k**0.5, B=torch.randn(d, r, generator=gen) / 10,
                       scaling=lora_scaling(ALPHA, r))


def cohort_ctx(n: int, shapes: dict[str, tuple[int, int]], session: bytes = b"bench") -> RoundContext:
    return RoundContext(round=2, shapes=shapes, ranks={f"s{i:04d}": RANK for i in range(n)}, session=session)


def one_site_traffic(name: str, n: int, d: int) -> dict[str, float]:
    """Values one site sends (every phase) and receives (broadcasts + the global) for one d×d module."""
    rule_name, params = RULES[name]
    rule = make_rule(rule_name, params)
    shapes = {"m": (d, d)}
    ctx = cohort_ctx(n, shapes)
    glob = Aggregate(adapter={"m": factors(d, d, RANK, 1)})
    f = factors(d, d, RANK, 2)
    up = down_bc = 0.0
    broadcast = None
    t_server = 0.0
    state: dict[str, Any] = {}
    rule.start(None, ctx, "s0000", ALPHA, state)
    if rule_name != "secure-stack":
        glob = None  # averaging rules: the global is replaced each round
    for phase in range(rule.phases):  # type: ignore[union-attr]
        vec = rule.vectors(phase, LocalUpdate(adapter={"m": f}), 10, ctx, broadcast, state=state)  # type: ignore[call-arg, arg-type]
        up += sum(np.asarray(v).size for v in vec.values())
        t0 = time.perf_counter()
        out = rule.combine(phase, {k: np.asarray(v, np.float64) for k, v in vec.items()}, ctx, glob, broadcast)  # type: ignore[union-attr]
        t_server += time.perf_counter() - t0
        if isinstance(out, Broadcast):
            broadcast = out
            down_bc += sum(np.asarray(v).size for v in out.tensors.values())
        else:
            rank = out.adapter["m"].rank if out.adapter else 0
    if rule_name == "secure-stack":  # the global a site downloads in steady state, not after this one-site sum
        rank = min(2 * n * RANK, d) if params.get("numerical_rank") else 64
    return {"up_values": up, "broadcast_values": down_bc, "global_values": 2 * d * rank, "published_rank": rank,
            "server_s": t_server}


def cohort_sweep(ns: list[int], d: int, modules: int) -> list[dict[str, Any]]:
    rows = []
    for n in ns:
        for name in RULES:
            if "old" in name and n * RANK + 10 > 1024:  # a 4096-wide QR/SVD per module: counted, not timed
                w = min(n * RANK + 10, d)
                rank = min(2 * n * RANK, d)
                t = {"up_values": 2 * d * w + 4 * d, "broadcast_values": d * w, "global_values": 2 * d * rank,
                     "published_rank": rank, "server_s": float("nan")}
            else:
                t = one_site_traffic(name, n, d)
            rows.append({"rule": name, "N": n, "up_MB": modules * t["up_values"] * 4 / 1e6,
                         "down_MB": modules * (t["broadcast_values"] * 8 + t["global_values"] * 4) / 1e6,
                         "published_rank": t["published_rank"], "server_s": modules * t["server_s"]})
        rows.append({"rule": "dense-secagg", "N": n, "up_MB": modules * d * d * 4 / 1e6,
                     "down_MB": modules * 2 * d * min(64, d) * 4 / 1e6, "published_rank": None, "server_s": None})
    return rows


def spectral_sites(n: int, d: int, seed: int, noise: float = 0.3) -> list[tuple[LoraFactors, int]]:
    """Sites that fine-tune toward a shared decaying-spectrum direction set plus their own rank-r noise."""
    gen = torch.Generator().manual_seed(seed)
    common = 48
    u = torch.linalg.qr(torch.randn(d, common, generator=gen, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(d, common, generator=gen, dtype=torch.float64))[0]
    sv = 0.9 ** torch.arange(common, dtype=torch.float64)
    out = []
    s = lora_scaling(ALPHA, RANK)
    for i in range(n):
        idx = torch.randperm(common, generator=gen)[:RANK]
        b = u[:, idx] * sv[idx].sqrt() + noise * torch.randn(d, RANK, generator=gen, dtype=torch.float64) / d**0.5
        a = sv[idx].sqrt()[:, None] * v[:, idx].T + noise * torch.randn(RANK, d, generator=gen, dtype=torch.float64) / d**0.5
        out.append((LoraFactors(A=a.float(), B=(b / s).float(), scaling=s), 10 + i % 5))
    return out


def run_sketch_round(rule: Any, sites: list[tuple[LoraFactors, int]], ctx: RoundContext, glob: Aggregate | None) -> Aggregate:
    broadcast = None
    for phase in range(rule.phases):
        total: dict[str, np.ndarray] = {}
        for i, (f, n) in enumerate(sites):
            for k, v in rule.vectors(phase, LocalUpdate(adapter={"m": f}), n, ctx, broadcast).items():
                total[k] = total.get(k, 0.0) + np.asarray(v, np.float64)
        out = rule.combine(phase, total, ctx, glob, broadcast)
        if isinstance(out, Aggregate):
            return out
        broadcast = out
    raise AssertionError("no aggregate")


def exact_of(sites: list[tuple[LoraFactors, int]]) -> torch.Tensor:
    total = sum(n for _, n in sites)
    return sum((n / total) * f.delta() for f, n in sites)  # type: ignore[return-value]


def power_error(target: torch.Tensor, w: int, session: bytes) -> float:
    """What one power iteration would buy: Q = orth(ΔW·ΔWᵀ·ΔW·Ω), ΔW ≈ QQᵀΔW (two more secure sums)."""
    from fedquilt.strategies.sketch import test_matrix

    omega = test_matrix(session, "range", "m", target.shape[1], w)
    q = torch.linalg.qr(target @ omega)[0]
    q = torch.linalg.qr(target @ torch.linalg.qr(target.T @ q)[0])[0]
    return float(torch.linalg.norm(target - q @ (q.T @ target)) / torch.linalg.norm(target))


def accuracy_sweep(ns: list[int], d: int) -> list[dict[str, Any]]:
    rows = []
    for n in ns:
        sites = spectral_sites(n, d, seed=n)
        ctx = RoundContext(round=1, shapes={"m": (d, d)}, ranks={f"s{i}": RANK for i in range(n)}, session=b"acc")
        target = exact_of(sites)
        sv = torch.linalg.svdvals(target)
        row: dict[str, Any] = {"N": n}
        # The cohort-independent default cap is w = 64 + 10; numerical_rank keeps the published rank out of it.
        for label, params in (("single-pass (default w=74)", {"max_width": 74}),
                              ("single-pass w=138", {"max_width": 138}),
                              ("two-pass w=74", {"passes": 2, "max_width": 74})):
            agg = run_sketch_round(make_rule("secure-stack", {**params, "numerical_rank": True}), sites, ctx, None)
            got = agg.adapter["m"].delta()  # type: ignore[index]
            row[label] = float(torch.linalg.norm(got - target) / torch.linalg.norm(target))
            row[label + " estimate"] = agg.info["estimated_relative_error"]
        w = 74
        row["best rank-64"] = float((sv[w - 10:] ** 2).sum().sqrt() / (sv**2).sum().sqrt())
        row["w=74 + 1 power iteration (4 sums; simulated)"] = power_error(target, w, ctx.session)
        rows.append(row)
    return rows


def rounds_sweep(rounds: int, d: int, sites_per_round: int) -> list[dict[str, Any]]:
    configs = {"old default (numerical rank)": {"numerical_rank": True, "max_width": 0},
               "capped 64 + feedback (default)": {},
               "capped 64, no feedback": {"error_feedback": False},
               "capped 64 + feedback, w=138": {"max_width": 138}}
    rules = {k: make_rule("secure-stack", v) for k, v in configs.items()}
    globs: dict[str, Aggregate | None] = {k: None for k in configs}
    cumulative = torch.zeros(d, d, dtype=torch.float64)
    rows = []
    for t in range(1, rounds + 1):
        sites = spectral_sites(sites_per_round, d, seed=1000 + t, noise=0.5)
        ctx = RoundContext(round=t, shapes={"m": (d, d)}, ranks={f"s{i}": RANK for i in range(sites_per_round)},
                           session=t.to_bytes(4, "big"))
        cumulative = cumulative + exact_of(sites)
        sv = torch.linalg.svdvals(cumulative)
        row: dict[str, Any] = {"round": t, "best rank-64 error": float((sv[64:] ** 2).sum().sqrt() / (sv**2).sum().sqrt())}
        for k, rule in rules.items():
            globs[k] = run_sketch_round(rule, sites, ctx, globs[k])
            f = globs[k].adapter["m"]  # type: ignore[union-attr, index]
            row[k + ": rank"] = f.rank
            row[k + ": 7B adapter MB"] = 2 * LAYERS * 2 * 4096 * min(f.rank, 4096) * 4 / 1e6 if "old" not in k else \
                2 * LAYERS * 2 * 4096 * min(t * sites_per_round * RANK, 4096) * 4 / 1e6
            row[k + ": error"] = float(torch.linalg.norm(f.delta() - cumulative) / torch.linalg.norm(cumulative))
            row[k + ": retained"] = globs[k].info["retained_energy"]  # type: ignore[union-attr]
        rows.append(row)
    return rows


def drop_survival(ns: list[int], p: float = 0.01, stages: int = 6) -> list[dict[str, Any]]:
    """Two-pass: every phase-0 contributor must also finish phase 1 (≈ (1−p)^(N·(stages−1)) after phase 0).
    Single pass: publishes while at least t = ⌊N/2⌋+1 masked inputs and unmask answers arrive."""
    from math import comb

    rows = []
    for n in ns:
        two = (1 - p) ** (n * (stages - 1))
        keep = (1 - p) ** stages
        t = n // 2 + 1
        one = sum(comb(n, j) * keep**j * (1 - keep) ** (n - j) for j in range(t, n + 1))
        rows.append({"N": n, "two-pass publishes": two, "single-pass publishes": one})
    return rows


def table(rows: list[dict[str, Any]], title: str) -> None:
    print(f"\n## {title}")
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")


def plot(doc: dict[str, Any], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed: no plot"
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for rule in sorted({r["rule"] for r in doc["cohort"]}):
        pts = [(r["N"], r["up_MB"]) for r in doc["cohort"] if r["rule"] == rule]
        a1.plot(*zip(*pts), marker="o", label=rule)
    a1.set(xscale="log", yscale="log", xlabel="sites N", ylabel="upload per site per round (MB)",
           title="7B q,v, r = 16")
    a1.legend(fontsize=7)
    for k in [k for k in doc["rounds"][0] if k.endswith(": 7B adapter MB")]:
        a2.plot([r["round"] for r in doc["rounds"]], [r[k] for r in doc["rounds"]], label=k[: -len(": 7B adapter MB")])
    a2.set(xlabel="round (20 sites x r=16 each)", ylabel="published adapter, 7B q,v (MB)",
           title="published adapter size as rounds grow", yscale="log")
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return str(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sweeps (CI smoke)")
    ap.add_argument("--loopback", default="", help="comma-separated N: also measure wall seconds per round on "
                    "loopback with N stand-in sites (bench/load.py; minutes per N)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ns = [10, 50, 200, 1000] if args.quick else [10, 20, 50, 100, 200, 500, 1000]
    d = 1024 if args.quick else 4096
    modules = 2 * LAYERS
    doc: dict[str, Any] = {"shapes": f"{modules} x {d}x{d}", "rank": RANK}
    doc["cohort"] = cohort_sweep(ns, d, modules)
    doc["accuracy"] = accuracy_sweep(ns, 128 if args.quick else 256)
    doc["rounds"] = rounds_sweep(10 if args.quick else 50, 128 if args.quick else 256, 20)
    doc["drops"] = drop_survival([10, 50, 100, 200, 500, 1000])
    table(doc["cohort"], f"per-site traffic and coordinator time per round ({doc['shapes']}, r={RANK})")
    table(doc["accuracy"], "relative error of the round update vs the exact stacked update (one 256x256 module, synthetic)")
    table([r for r in doc["rounds"] if r["round"] in (1, 2, 5, 10, 20, 30, 40, 50)], "rounds: published rank, error")
    table(doc["drops"], "probability a secure-stack round publishes, 1% drops per stage")
    here = Path(__file__).resolve().parent  # --quick must not overwrite the documented plot
    doc["plot"] = plot(doc, here / "results" / "scale-quick.png" if args.quick else here.parent / "docs" / "scale.png")
    if args.loopback:
        import load  # bench/load.py, beside this script

        doc["loopback"] = [load.run_one(int(n), rule, 2, 4, 1800.0) for n in args.loopback.split(",")
                           for rule in ("secure-stack", "fedit")]
        table([{k: r.get(k) for k in ("sites", "rule", "completed", "seconds_per_round", "coordinator_peak_rss_mib")}
               for r in doc["loopback"]], "loopback: wall seconds per round (real coordinator, stand-in sites)")
    out = Path(__file__).resolve().parent / "results" / ("scale-quick.json" if args.quick else "scale.json")
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {out}; plot: {doc['plot']}")


if __name__ == "__main__":
    main()
