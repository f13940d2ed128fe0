"""How a simulation splits one labelled corpus into sites: IID, Dirichlet(α) label skew, or by a column.

All three return one list of row indices per site, disjoint and covering every row given, and take
their randomness from an injected ``numpy.random.Generator``.

* ``iid``: a random permutation cut into near-equal parts.
* ``dirichlet`` (Hsu et al. 2019): for every label, proportions q ~ Dir(α·1) over the sites and the
  label's rows dealt out in those proportions; small α (0.1) gives sites dominated by one label, large
  α approaches IID. Draws are repeated until every site holds at least ``min_rows`` rows.
* ``by_column``: the distinct values of a column (an author, a movie, a topic) are shuffled and dealt
  to the sites greedily by size (largest first to the currently smallest site), so no value is split.
"""

from __future__ import annotations

from enum import Enum
from typing import Hashable, Sequence

import numpy as np


class PartitionError(ValueError):
    """A partition that cannot be made as asked."""


class Partition(Enum):
    """How rows are dealt to sites."""

    IID = "iid"
    DIRICHLET = "dirichlet"
    COLUMN = "column"


def iid(n_rows: int, sites: int, rng: np.random.Generator) -> list[list[int]]:
    """A random permutation cut into ``sites`` near-equal parts."""
    _check(n_rows, sites)
    return [sorted(int(i) for i in part) for part in np.array_split(rng.permutation(n_rows), sites)]


def dirichlet(labels: Sequence[int], sites: int, alpha: float, rng: np.random.Generator,
              min_rows: int = 2, tries: int = 1000) -> list[list[int]]:
    """Label skew: each label's rows dealt to sites in Dir(α) proportions (see the module doc)."""
    _check(len(labels), sites)
    if not alpha > 0:
        raise PartitionError(f"dirichlet alpha must be > 0, got {alpha}")
    y = np.asarray(labels)
    for _ in range(tries):
        parts: list[list[int]] = [[] for _ in range(sites)]
        for label in np.unique(y):
            rows = rng.permutation(np.flatnonzero(y == label))
            q = rng.dirichlet(np.full(sites, alpha))
            cuts = (np.cumsum(q)[:-1] * len(rows)).astype(int)
            for site, chunk in enumerate(np.split(rows, cuts)):
                parts[site].extend(int(i) for i in chunk)
        if min(len(p) for p in parts) >= min_rows:
            return [sorted(p) for p in parts]
    raise PartitionError(f"no Dirichlet({alpha}) split of {len(labels)} rows gave every one of {sites} sites "
                         f"{min_rows} rows in {tries} tries")


def by_column(values: Sequence[Hashable], sites: int, rng: np.random.Generator) -> list[list[int]]:
    """Whole groups of a column's values dealt to sites, largest group first to the smallest site."""
    _check(len(values), sites)
    groups: dict[Hashable, list[int]] = {}
    for i, v in enumerate(values):
        groups.setdefault(v, []).append(i)
    if len(groups) < sites:
        raise PartitionError(f"the column has {len(groups)} distinct values, fewer than {sites} sites")
    keys = list(groups)
    order = [keys[int(i)] for i in rng.permutation(len(keys))]
    order.sort(key=lambda k: -len(groups[k]))  # stable: ties keep the shuffled order
    parts: list[list[int]] = [[] for _ in range(sites)]
    for k in order:
        smallest = min(range(sites), key=lambda s: len(parts[s]))
        parts[smallest].extend(groups[k])
    return [sorted(p) for p in parts]


def split(kind: Partition, sites: int, rng: np.random.Generator, labels: Sequence[int] | None = None,
          column: Sequence[Hashable] | None = None, alpha: float = 0.5, n_rows: int | None = None) -> list[list[int]]:
    """Dispatch on ``kind`` (the arguments that kind needs must be given)."""
    if kind is Partition.IID:
        count = n_rows if n_rows is not None else len(labels or column or [])
        return iid(count, sites, rng)
    if kind is Partition.DIRICHLET:
        if labels is None:
            raise PartitionError("a Dirichlet partition needs labels")
        return dirichlet(labels, sites, alpha, rng)
    if column is None:
        raise PartitionError("a column partition needs the column's values")
    return by_column(column, sites, rng)


def label_histogram(labels: Sequence[int], parts: Sequence[Sequence[int]], num_labels: int) -> list[list[int]]:
    """Rows of each label per site (for the results table)."""
    return [[sum(1 for i in p if labels[i] == k) for k in range(num_labels)] for p in parts]


def _check(n_rows: int, sites: int) -> None:
    if sites < 1:
        raise PartitionError(f"sites must be >= 1, got {sites}")
    if n_rows < sites:
        raise PartitionError(f"cannot split {n_rows} rows over {sites} sites")
