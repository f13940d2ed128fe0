"""From ``SimConfig`` to a ready ``Simulation``: the model folder, the rows, the split, the sites' trainers.

Rows from a named corpus or file are shuffled with the data seed; the first ``test_rows`` are the
held-out set (never seen by a site), the rest (at most ``max_rows``) are partitioned over the sites.
With ``site_files`` every site reads its own file exactly as an agent does (``agent.data.load_dataset``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..agent.data import TokenizedDataset, load_dataset
from .config import SimConfig
from .corpora import Corpus, load_corpus, model_dir
from .engine import Simulation, Site, new_trainer
from .evaluate import Evaluator
from .partition import label_histogram, split


@dataclass
class Prepared:
    """A built simulation and facts about its data."""

    simulation: Simulation
    model_dir: Path
    site_rows: list[int]
    label_histogram: list[list[int]] = field(default_factory=list)
    test_rows: int = 0


def tokenize(rows: list[dict[str, Any]], tokenizer: Any, task: str, max_length: int) -> TokenizedDataset:
    """Rows -> a ``TokenizedDataset`` as ``agent.data.load_dataset`` would build it."""
    encoded = tokenizer([str(r["text"]) for r in rows], truncation=True, max_length=max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    labels = [int(r["label"]) for r in rows] if task == "seq-cls" else None
    return TokenizedDataset(encoded["input_ids"], labels, int(pad))


def split_rows(cfg: SimConfig, corpus: Corpus, n_sites: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                                      list[list[int]]]:
    """The held-out rows, the training rows, and each site's indices into the training rows (see the module doc)."""
    rng = np.random.default_rng(cfg.data.seed)
    rows = [corpus.rows[int(i)] for i in rng.permutation(len(corpus.rows))]
    held, rest = rows[: cfg.data.test_rows], rows[cfg.data.test_rows:]
    if cfg.data.max_rows is not None:
        rest = rest[: cfg.data.max_rows]
    parts = split(cfg.data.partition, n_sites, rng, labels=[int(r["label"]) for r in rest],
                  column=[r.get(cfg.data.column or "", "") for r in rest] if cfg.data.column else None,
                  alpha=cfg.data.dirichlet_alpha, n_rows=len(rest))
    return held, rest, parts


_EVALUATORS: dict[tuple[Any, ...], Evaluator] = {}


def _evaluator(mdir: Path, task: str, num_labels: int | None, head_seed: int) -> Evaluator:
    """One resident evaluation model per base (it restores its weights before every score)."""
    key = (str(mdir), task, num_labels, head_seed)
    if key not in _EVALUATORS:
        _EVALUATORS[key] = Evaluator(mdir, task, num_labels, head_seed)  # type: ignore[arg-type]
    return _EVALUATORS[key]


def build_simulation(cfg: SimConfig, echo: Callable[[str], None] | None = None,
                     corpus: Corpus | None = None) -> Prepared:
    """Load the model and data named by ``cfg`` and build the sites (``corpus`` reuses rows already read)."""
    mdir = model_dir(cfg.model.dir)
    n_sites = len(cfg.data.site_files) if cfg.data.site_files is not None else cfg.data.sites
    ranks = cfg.model.ranks or [cfg.model.rank] * n_sites
    if len(ranks) != n_sites:
        raise ValueError(f"model.ranks names {len(ranks)} ranks for {n_sites} sites")
    if cfg.data.source is not None:
        corpus = corpus or load_corpus(cfg.data.source, cfg.model.num_labels)
        if cfg.model.num_labels is None and cfg.model.task == "seq-cls":
            cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"num_labels": corpus.num_labels})})
    m = cfg.model
    num_labels = m.num_labels
    if m.task == "seq-cls" and num_labels is None:
        raise ValueError("model.num_labels is needed for seq-cls with site_files")
    trainers = [new_trainer(cfg, mdir, 1000 * cfg.federation.seed + i) for i in range(n_sites)]
    tok = trainers[0].tokenizer
    test: TokenizedDataset | None = None
    hist: list[list[int]] = []
    if cfg.data.site_files is not None:
        datasets = [load_dataset(f.train, tok, m.task, m.max_length, num_labels) for f in cfg.data.site_files]
        if cfg.data.test_file is not None:
            test = load_dataset(cfg.data.test_file, tok, m.task, m.max_length, num_labels)
    else:
        assert corpus is not None
        held, rest, parts = split_rows(cfg, corpus, n_sites)
        datasets = [tokenize([rest[i] for i in p], tok, m.task, m.max_length) for p in parts]
        if m.task == "seq-cls":
            hist = label_histogram([int(r["label"]) for r in rest], parts, int(num_labels or 0))
        test = tokenize(held, tok, m.task, m.max_length)
    sites = [Site(f"site-{i}", datasets[i], ranks[i], trainers[i]) for i in range(n_sites)]
    evaluator = _evaluator(mdir, m.task, num_labels, m.head_seed) if test is not None else None
    sim = Simulation(cfg, sites, test, evaluator, echo)
    return Prepared(sim, mdir, [d.n for d in datasets], hist, test.n if test is not None else 0)
