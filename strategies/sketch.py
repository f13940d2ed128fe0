"""Two secure sums that deliver Σ p_i ΔW_i to the server as ``Q·M`` (randomized range finder).

Theory of operation (Halko, Martinsson & Tropp 2011, §4):

* Phase 0. Every site derives the same Gaussian test matrix Ω (k×w) from the public session id
  and the module name, and submits ``n_i·ΔW_i·Ω`` (d×w). The server sums, divides by Σn and
  orthonormalises ``Y = Σ p_i ΔW_i Ω`` in float64: ``Q = orth(Y)`` (d×w), broadcast to sites.
* Phase 1. Sites submit ``n_i·Qᵀ·ΔW_i`` (w×k) and, for the error estimate, ``n_i·ΔW_i·Ω'`` for
  a few fresh probe columns Ω' (d×t) drawn from this phase's session. The server forms
  ``ΔW = Q·M``.

If w ≥ rank(Σ p_i ΔW_i) — guaranteed when w ≥ Σ r_i — then range(Y) = range(ΔW) with probability
1 and ``Q·M`` is exact. With a smaller w it is the near-optimal projection, and the probes give
the a-posteriori estimate ‖(I−QQᵀ)ΔW‖²_F ≈ ‖(I−QQᵀ)ΔW Ω'‖²_F / t (Halko §4.3), reported as a
relative error. ΔW_i = s_i·B_i·A_i is never formed: sites apply Ω and Q to the factors.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from .base import Broadcast, RoundContext, Vectors
from .lora import Adapter
from .submission import check_modules, count_vector, key, mean, total_count, weighted
from .base import N_KEY

F64 = torch.float64
MIN_OVERSAMPLING = 10
"""Oversampling below this is refused unless an explicit sketch width is configured."""


def test_matrix(session: bytes, label: str, module: str, rows: int, cols: int) -> torch.Tensor:
    """Gaussian (rows×cols) matrix every site derives alike from (session, label, module)."""
    digest = hashlib.sha256(session + b"\x00" + label.encode() + b"\x00" + module.encode()).digest()
    gen = np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "big")))
    return torch.from_numpy(gen.standard_normal((rows, cols)))


def sketch_width(ctx: RoundContext, module: str, oversampling: int, width: int | None, cap: int | None = None) -> int:
    """Sketch columns for ``module``: Σ r_i + oversampling (or ``width``), at most ``cap`` and min(d, k).

    The cap keeps a site's upload independent of the cohort: without it the width, and with it
    every site's d×w + w×k upload, grows by r_i for every site that joins.
    """
    d, k = ctx.shapes[module]
    wanted = width if width is not None else ctx.total_rank + oversampling
    if cap is not None and width is None:
        wanted = min(wanted, cap)
    return max(1, min(wanted, d, k))


@dataclass(frozen=True)
class SketchConfig:
    """How the sketch is drawn and submitted."""

    oversampling: int
    width: int | None
    probes: int
    float64: bool
    cap: int | None = None
    """Largest width when ``width`` is not given (None: Σ r_i + oversampling, exact)."""
    corange: int | None = None
    """Rows of the single-pass co-range sketch Ψ·ΔW (None: 2w + 1, Tropp et al. 2017)."""

    def width_of(self, ctx: RoundContext, module: str) -> int:
        """The sketch width for ``module`` this round."""
        return sketch_width(ctx, module, self.oversampling, self.width, self.cap)

    def corange_of(self, ctx: RoundContext, module: str) -> int:
        """Rows of the co-range sketch for ``module`` (≥ the width, at most d)."""
        w = self.width_of(ctx, module)
        d = ctx.shapes[module][0]
        return max(w, min(self.corange if self.corange is not None else 2 * w + 1, d))


def sketch_vectors(adapter: Adapter, n: int, ctx: RoundContext, cfg: SketchConfig) -> Vectors:
    """Phase 0, client: ``<module>/Y = n·s·B·(A·Ω)`` for every module."""
    check_modules(adapter, ctx, "the trained adapter")
    out: Vectors = {N_KEY: count_vector(n)}
    for module, f in adapter.items():
        omega = test_matrix(ctx.session, "range", module, f.A.shape[1], cfg.width_of(ctx, module))
        y = f.scaling * (f.B.to(F64) @ (f.A.to(F64) @ omega))
        out[key(module, "Y")] = weighted(y, n, cfg.float64)
    return out


def projection_vectors(
    adapter: Adapter, n: int, ctx: RoundContext, cfg: SketchConfig, broadcast: Broadcast | None
) -> Vectors:
    """Phase 1, client: ``<module>/M = n·s·(QᵀB)·A`` and probe sketches ``<module>/P``."""
    if broadcast is None:
        raise ValueError("phase 1 needs the broadcast basis Q from phase 0, got None")
    check_modules(adapter, ctx, "the trained adapter")
    out: Vectors = {N_KEY: count_vector(n)}
    for module, f in adapter.items():
        name = key(module, "Q")
        if name not in broadcast.tensors:
            raise ValueError(f"broadcast lacks the basis {name!r}")
        q = torch.from_numpy(np.asarray(broadcast.tensors[name], dtype=np.float64))
        if q.shape[0] != f.B.shape[0]:
            raise ValueError(f"basis {name!r} has {q.shape[0]} rows, module has d={f.B.shape[0]}")
        b, a = f.scaling * f.B.to(F64), f.A.to(F64)
        out[key(module, "M")] = weighted((q.T @ b) @ a, n, cfg.float64)
        probe = test_matrix(ctx.session, "probe", module, a.shape[1], cfg.probes)
        out[key(module, "P")] = weighted(b @ (a @ probe), n, cfg.float64)
    return out


def basis(sums: Mapping[str, np.ndarray], ctx: RoundContext) -> Broadcast:
    """Phase 0, server: ``<module>/Q = orth(Σ n_i Y_i / Σ n_i)`` in float64."""
    total = total_count(sums)
    tensors: dict[str, np.ndarray] = {}
    for module in ctx.shapes:
        q, _ = torch.linalg.qr(mean(sums, key(module, "Y"), total))
        tensors[key(module, "Q")] = q.numpy()
    return Broadcast(tensors=tensors)


@dataclass(frozen=True)
class Recovered:
    """Phase 1, server: ``ΔW = B·A`` per module (B = Q, A = M) and the error estimate."""

    products: dict[str, tuple[torch.Tensor, torch.Tensor]]
    estimated_relative_error: float
    per_module_error: dict[str, float]


def recover(sums: Mapping[str, np.ndarray], ctx: RoundContext, q_basis: Broadcast) -> Recovered:
    """Phase 1, server: ``ΔW = Q·M`` with M = Σ n_i M_i / Σ n_i, plus the probe estimate."""
    total = total_count(sums)
    products: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    errors: dict[str, float] = {}
    resid_all = norm_all = 0.0
    for module in ctx.shapes:
        name = key(module, "Q")
        if name not in q_basis.tensors:
            raise ValueError(f"basis lacks {name!r}")
        q = torch.from_numpy(np.asarray(q_basis.tensors[name], dtype=np.float64))
        m = mean(sums, key(module, "M"), total)
        p = mean(sums, key(module, "P"), total)
        resid = float(((p - q @ (q.T @ p)) ** 2).sum()) / max(p.shape[1], 1)
        norm = float((m**2).sum())
        errors[module] = (resid / (norm + resid)) ** 0.5 if norm + resid > 0 else 0.0
        resid_all, norm_all = resid_all + resid, norm_all + norm
        products[module] = (q, m)
    overall = (resid_all / (norm_all + resid_all)) ** 0.5 if norm_all + resid_all > 0 else 0.0
    return Recovered(products, overall, errors)
