"""Fed-ALoRA's heterogeneous-rank math (strategies/alora_ranks.py) against the paper's own form.

The paper trains ΔW_i = s_i (B_0 + B_{i2}B_{i1}) M_i A_i; the module trains a stock pair (B̃, A_i) from
B̃ = B_0 M_i with B_{i1} = M_iᵀ. These tests check the two are the same model, with the same gradient,
and that the submitted piece is the paper's B_{i2}B_{i1}.
"""

from __future__ import annotations

import pytest
import torch

from fedquilt.strategies.alora_ranks import (
    a_side, b_update, next_shared_b, projector, resolve_shared_rank, site_b, training_rank,
)

D, K, DM = 12, 10, 8


def paper_delta(b0, b2, b1, m, a, s):
    """The paper's ΔW_i = s (B_0 + B_{i2} B_{i1}) M_i A_i, in float64."""
    return s * (b0.double() + b2.double() @ b1.double()) @ m.double() @ a.double()


@pytest.mark.parametrize("rank", [1, 2, 5, 8])
def test_projector_has_orthonormal_columns_and_a_stable_prefix(rank):
    m = projector(3, "q", "site-a", rank, DM)
    assert m.shape == (DM, rank) and m.dtype == torch.float64
    torch.testing.assert_close(m.T @ m, torch.eye(rank, dtype=torch.float64), atol=1e-12, rtol=0)
    full = projector(3, "q", "site-a", DM, DM)
    torch.testing.assert_close(m, full[:, :rank], atol=1e-12, rtol=0)
    assert torch.equal(m, projector(3, "q", "site-a", rank, DM))


def test_projector_differs_by_site_module_and_seed():
    base = projector(3, "q", "site-a", 4, DM)
    for other in (projector(3, "q", "site-b", 4, DM), projector(3, "v", "site-a", 4, DM), projector(4, "q", "site-a", 4, DM)):
        assert float((base - other).abs().max()) > 1e-3


@pytest.mark.parametrize("rank", [2, 4, 8])
def test_the_stock_pair_is_the_papers_decomposed_model(rank):
    gen = torch.Generator().manual_seed(rank)
    b0 = torch.randn(D, DM, generator=gen, dtype=torch.float64)
    m = projector(0, "q", "s", rank, DM)
    start = site_b(b0, m)
    torch.testing.assert_close(start, b0 @ m)
    trained_b = start + torch.randn(D, rank, generator=gen, dtype=torch.float64)
    a = torch.randn(rank, K, generator=gen, dtype=torch.float64)
    s = 16.0 / rank
    b2 = trained_b - start  # the paper's B_{i2}, with B_{i1} = Mᵀ
    want = paper_delta(b0, b2, m.T, m, a, s)
    torch.testing.assert_close(s * trained_b @ a, want, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(b_update(start, trained_b, m), b2 @ m.T, atol=1e-12, rtol=0)
    # the global's part of the site's model: B_0 plus the submitted update, read through M_i
    torch.testing.assert_close((b0 + b_update(start, trained_b, m)) @ m, trained_b, atol=1e-10, rtol=1e-10)


def test_the_trainers_b_gradient_is_the_papers_b2_gradient():
    gen = torch.Generator().manual_seed(9)
    rank = 3
    b0 = torch.randn(D, DM, generator=gen, dtype=torch.float64)
    m = projector(1, "v", "s", rank, DM)
    a = torch.randn(rank, K, generator=gen, dtype=torch.float64)
    x = torch.randn(K, 5, generator=gen, dtype=torch.float64)
    target = torch.randn(D, 5, generator=gen, dtype=torch.float64)
    b_tilde = site_b(b0, m).clone().requires_grad_(True)
    ((b_tilde @ a @ x - target) ** 2).sum().backward()
    b2 = torch.zeros(D, rank, dtype=torch.float64, requires_grad=True)
    (((b0 + b2 @ m.T) @ m @ a @ x - target) ** 2).sum().backward()
    torch.testing.assert_close(b_tilde.grad, b2.grad, atol=1e-10, rtol=1e-10)


def test_a_site_that_leaves_b_unchanged_submits_a_zero_update():
    b0 = torch.randn(D, DM, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    m = projector(0, "q", "small", 2, DM)
    start = site_b(b0, m)
    assert float(b_update(start, start.clone(), m).abs().max()) == 0.0
    torch.testing.assert_close(next_shared_b(b0, b_update(start, start, m)), b0, atol=0, rtol=0)


def test_a_side_and_next_shared_b():
    m = projector(0, "q", "s", 2, DM)
    a = torch.ones(2, K, dtype=torch.float64)
    torch.testing.assert_close(a_side(a, m, 4.0), 4.0 * m @ a)
    upd = torch.ones(D, DM, dtype=torch.float64)
    torch.testing.assert_close(next_shared_b(None, upd), upd)
    torch.testing.assert_close(next_shared_b(2 * upd, upd), 3 * upd)
    with pytest.raises(ValueError, match="differ"):
        next_shared_b(torch.zeros(D, DM + 1), upd)
    with pytest.raises(ValueError, match="chain"):
        a_side(torch.ones(3, K), m, 1.0)
    with pytest.raises(ValueError, match="chain"):
        site_b(torch.zeros(D, DM + 1), m)


def test_shared_rank_resolution_and_capped_training_rank():
    assert resolve_shared_rank(0, None, 8) == 8
    assert resolve_shared_rank(0, 6, 8) == 6  # the published B's width wins over a changed cohort
    assert resolve_shared_rank(16, None, 8) == 16
    with pytest.raises(ValueError, match="shared_rank is 16 but the global's shared B has 8 columns"):
        resolve_shared_rank(16, 8, 8)
    assert training_rank(64, 16) == 16 and training_rank(2, 16) == 2
    assert projector(0, "q", "big", 64, 16).shape == (16, 16)
