"""``fedquilt simulate --config sim.toml``: a whole federation in one process, with a results table and plots."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Add ``simulate``."""
    p = sub.add_parser(
        "simulate", help="simulate a whole federation in one process (choose a rule and hyper-parameters)",
        description="Run every site of a federation one after another in this process: the same rule halves, the "
                    "same trainer and the same secure-sum arithmetic as a deployment, over a corpus split IID, by "
                    "Dirichlet label skew or by a column. Prints a table per round and writes results.json (and "
                    "PNG plots when matplotlib is installed). See docs/quality.md.")
    p.add_argument("--config", required=True, type=Path, help="simulation TOML file (see docs/quality.md)")
    p.add_argument("--out", type=Path, help="results folder (default: the config's output, else ./simulation-results)")
    p.set_defaults(func=_simulate)


def run_simulation(config: Path, out: Path | None = None, echo: Any = print) -> dict[str, Any]:
    """Run ``config``; write and return the results."""
    from ..simulation.build import build_simulation
    from ..simulation.config import load_sim_config
    from ..simulation.results import plot, table, write_json

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]  # every site loads the base: one "newly initialised head" report is enough
    cfg = load_sim_config(config)
    folder = out or cfg.output or Path("simulation-results")
    prepared = build_simulation(cfg, echo=echo)
    fed = cfg.federation
    echo(f"• {len(prepared.site_rows)} sites ({prepared.site_rows} rows), rule {fed.rule}"
         f"{' + ' + str(fed.server_optimizer['name']) if fed.server_optimizer else ''}, "
         f"secure aggregation {'on' if fed.secure else 'OFF'}, {fed.rounds} rounds, {prepared.test_rows} held-out rows")
    result = prepared.simulation.run()
    rounds = [r.as_dict() for r in result.rounds]
    flat = [{"round": r["round"], "sites": r["contributors"], "loss_before": r["train_loss_before"],
             "loss_after": r["train_loss_after"], **r["metrics"], "seconds": r["seconds"]} for r in rounds]
    columns = list(flat[0]) if flat else []
    echo("")
    echo(table(flat, columns))
    payload = {"config": cfg.model_dump(mode="json"), "site_rows": prepared.site_rows,
               "label_histogram": prepared.label_histogram, "rounds": rounds, "final": result.final}
    write_json(folder / "results.json", payload)
    metric = "accuracy" if cfg.model.task == "seq-cls" else "perplexity"
    series = {fed.rule: [float(r["metrics"].get(metric, float("nan"))) for r in rounds]}
    if plot(folder / f"{metric}.png", series, metric, cfg.name):
        echo(f"wrote {folder / 'results.json'} and {folder / (metric + '.png')}")
    else:
        echo(f"wrote {folder / 'results.json'} (install matplotlib for plots)")
    return payload


def _simulate(args: argparse.Namespace) -> int:
    run_simulation(args.config, args.out)
    return 0
