"""Held-out perplexity is exp of the mean over all predicted tokens, whatever the evaluation batches are."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pytest
import torch

from fedquilt.agent.data import TokenizedDataset
from fedquilt.simulation.evaluate import Evaluator

if TYPE_CHECKING:
    from fedquilt.cli.workspace import Workspace


def _token_nll(model: torch.nn.Module, rows: list[list[int]]) -> tuple[float, int]:
    """Slow reference: every row alone, each next token's −log p summed by hand."""
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in rows:
            x = torch.tensor([ids])
            logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].to(torch.float64), dim=-1)
            total -= float(logp.gather(1, x[0, 1:, None]).sum())
            count += len(ids) - 1
    return total, count


@pytest.mark.parametrize("batch_size", [1, 2, 64])
def test_perplexity_is_the_token_weighted_mean(tiny_workspace: Workspace, batch_size: int) -> None:
    ev = Evaluator(tiny_workspace.model_dir, "causal-lm", None, 0, batch_size=batch_size)
    rows = [[5, 9], [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22], [30, 31, 32], [12, 40, 41, 42, 43]]
    pad = ev.tokenizer.pad_token_id
    data = TokenizedDataset(rows, None, int(pad))
    got = ev.score(None, data)
    total, count = _token_nll(ev.model, rows)
    assert got["loss"] == pytest.approx(total / count, rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)
    assert got["tokens"] == count == 1 + 15 + 2 + 4
    # A mean of per-row means (what one-row batches weighted by rows gave) is a different number here.
    per_row = [(_token_nll(ev.model, [r])[0] / (len(r) - 1)) for r in rows]
    assert abs(sum(per_row) / len(per_row) - total / count) > 1e-3
