"""Wasserstein distances between sample sets, computed with POT (Python Optimal Transport).

`w2_exact` solves the discrete OT problem exactly (network simplex), so on toy data the metric
has no approximation error beyond sampling; `noise_floor` gives the value of the same metric
between two independent data samples of the same size — the best a perfect generator can score.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import ot
import torch
from torch import Tensor


def _as_numpy(x: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(x.shape[0], -1)


def w2_exact(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> float:
    """Exact 2-Wasserstein distance between the empirical measures of a (n, *D) and b (m, *D)."""
    xa, xb = _as_numpy(a), _as_numpy(b)
    if not (np.isfinite(xa).all() and np.isfinite(xb).all()):
        return float("nan")
    cost = ot.dist(xa, xb, metric="sqeuclidean")
    wa, wb = np.full(len(xa), 1.0 / len(xa)), np.full(len(xb), 1.0 / len(xb))
    return float(np.sqrt(max(ot.emd2(wa, wb, cost, numItermax=10_000_000), 0.0)))


def sliced_w2(a: Tensor | np.ndarray, b: Tensor | np.ndarray, n_projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance (Monte-Carlo over `n_projections` random directions, fixed seed)."""
    xa, xb = _as_numpy(a), _as_numpy(b)
    if not (np.isfinite(xa).all() and np.isfinite(xb).all()):
        return float("nan")
    return float(ot.sliced_wasserstein_distance(xa, xb, n_projections=n_projections, seed=seed, p=2))


def noise_floor(
    sample_data: Callable[[int, torch.Generator], Tensor],
    n: int,
    seed: int = 0,
    repeats: int = 3,
) -> dict[str, float]:
    """Data-to-data W2 and sliced W2 at sample size n (mean over `repeats` pairs of fresh samples)."""
    g = torch.Generator().manual_seed(seed)
    w2s, sws = [], []
    for _ in range(repeats):
        a, b = sample_data(n, g), sample_data(n, g)
        w2s.append(w2_exact(a, b))
        sws.append(sliced_w2(a, b))
    return {"w2": float(np.mean(w2s)), "sliced_w2": float(np.mean(sws))}
