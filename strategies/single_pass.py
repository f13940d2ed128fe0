"""One secure sum that delivers Σ p_i ΔW_i to the server (single-pass randomized sketch).

Theory of operation (Tropp, Yurtsever, Udell & Cevher 2017, "Practical sketching algorithms for
low-rank matrix approximation", §4; Halko, Martinsson & Tropp 2011, §5.5):

* Client. Every site derives the same public Gaussian test matrices from the session and module:
  Ω (k×w), Ψ (l×d) and probe columns Ω' (k×t), and submits, in **one** secure sum,
  ``Y_i = n_i·ΔW_i·Ω`` (range sketch, d×w), ``W_i = n_i·Ψ·ΔW_i`` (co-range sketch, l×k) and
  ``P_i = n_i·ΔW_i·Ω'`` (probes, d×t). ΔW_i = s_i·B_i·A_i is never formed.
* Server. With Y, W, P the means over the sum's contributors: Q = orth(Y), X = argmin ‖(ΨQ)X − W‖
  (a w×k least-squares solve), and ΔW ≈ Q·X. If rank(ΔW) ≤ w ≤ l, range(Q) = range(ΔW) and
  ΨQ has full column rank with probability 1, so ΨΔW = ΨQ·QᵀΔW gives X = QᵀΔW: exact. With a
  capped w it is near-optimal: E‖ΔW − QX‖² ≤ (1 + w/(l−w−1))·E‖ΔW − QQᵀΔW‖² (Tropp et al.
  Thm 4.3), which is why l defaults to 2w + 1.
* Error estimate. Ω' is independent of Q and X, so ‖P − Q·X·Ω'‖²_F / t is an unbiased estimate
  of the *final* error ‖ΔW − QX‖²_F (not just of the range), reported relative to ‖QX‖_F.

Why one sum: the two-pass range finder (``sketch``) releases Y over the phase-0 participants and
then M = QᵀΔW over the phase-1 participants; if they differ, Y − Q·M·Ω is the dropped site's own
sketch, so such rounds must be discarded. Here the coordinator learns exactly one sum, over
whoever's masked input arrived (SecAgg's own guarantee, ≥ t sites), and a drop at any stage
only removes that site from the one sum (docs/rules.md, "Drops").
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from .base import N_KEY, RoundContext, Vectors
from .lora import Adapter
from .sketch import F64, Recovered, SketchConfig, test_matrix
from .submission import check_modules, count_vector, key, mean, total_count, weighted


def single_pass_vectors(adapter: Adapter, n: int, ctx: RoundContext, cfg: SketchConfig) -> Vectors:
    """Client: ``<module>/Y = n·ΔW·Ω``, ``<module>/W = n·Ψ·ΔW`` and ``<module>/P = n·ΔW·Ω'``."""
    check_modules(adapter, ctx, "the trained adapter")
    out: Vectors = {N_KEY: count_vector(n)}
    for module, f in adapter.items():
        d, k = f.B.shape[0], f.A.shape[1]
        b, a = f.scaling * f.B.to(F64), f.A.to(F64)
        omega = test_matrix(ctx.session, "range", module, k, cfg.width_of(ctx, module))
        psi = test_matrix(ctx.session, "corange", module, cfg.corange_of(ctx, module), d)
        probe = test_matrix(ctx.session, "probe", module, k, cfg.probes)
        out[key(module, "Y")] = weighted(b @ (a @ omega), n, cfg.float64)
        out[key(module, "W")] = weighted((psi @ b) @ a, n, cfg.float64)
        out[key(module, "P")] = weighted(b @ (a @ probe), n, cfg.float64)
    return out


def single_pass_recover(sums: Mapping[str, np.ndarray], ctx: RoundContext) -> Recovered:
    """Server: ``ΔW ≈ Q·X`` per module from the one sum, with the probe estimate of its error."""
    total = total_count(sums)
    products: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    errors: dict[str, float] = {}
    resid_all = norm_all = 0.0
    for module, (d, k) in ctx.shapes.items():
        y = mean(sums, key(module, "Y"), total)
        w = mean(sums, key(module, "W"), total)
        p = mean(sums, key(module, "P"), total)
        # Widths come from the sums, not from ctx: sites sized them for the cohort, the server's ctx
        # holds only the sites that finished (a smaller Σ r_i).
        if y.ndim != 2 or w.ndim != 2 or y.shape[0] != d or w.shape[1] != k or w.shape[0] < y.shape[1]:
            raise ValueError(f"{module}: sketch shapes {tuple(y.shape)}, {tuple(w.shape)} do not fit a {d}x{k} "
                             "module (need Y d×w, W l×k with l ≥ w)")
        q, _ = torch.linalg.qr(y)
        psi = test_matrix(ctx.session, "corange", module, w.shape[0], d)
        x = torch.linalg.lstsq(psi @ q, w).solution
        probe = test_matrix(ctx.session, "probe", module, k, p.shape[1])
        resid = float(((p - q @ (x @ probe)) ** 2).sum()) / max(p.shape[1], 1)
        norm = float((x**2).sum())  # ‖Q·X‖²_F, Q orthonormal
        errors[module] = (resid / norm) ** 0.5 if norm > 0 else 0.0
        resid_all, norm_all = resid_all + resid, norm_all + norm
        products[module] = (q, x)
    overall = (resid_all / norm_all) ** 0.5 if norm_all > 0 else 0.0
    return Recovered(products, overall, errors)
