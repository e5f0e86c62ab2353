"""Transport cost of the couplings (method spec §8): how far each noise travels to its trajectory end.

    IC:  E‖x⋆ − z‖²                          (independent draws)
    OT:  E‖x⋆ − z_π‖²                        (exact assignment within minibatches of size b)
    GC:  c(σ) = E‖f(x⋆ + σ z, σ) − z‖²       (a curve over σ; f is f⋆ or a trained model)

c(σ_min) is the IC cost (f(x, σ_min) = x ≈ x⋆ for small σ_min), and the paper expects GC below OT
below IC, with c decreasing near σ_min and for large σ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from gcflow.pairs.coupling import minibatch_ot_coupling
from gcflow.pairs.types import PointFn
from gcflow.theory.exact_map import gaussian_map_scale


@dataclass
class CostEstimate:
    """A Monte-Carlo transport cost: mean squared distance and its standard error."""

    value: float
    stderr: float


def _summary(per: Tensor) -> CostEstimate:
    return CostEstimate(float(per.mean()), float(per.std() / math.sqrt(per.shape[0])))


def independent_cost(x0: Tensor, z: Tensor) -> CostEstimate:
    """IC: mean ‖x⋆ − z‖² over the pairs; x0, z: (n, d)."""
    return _summary((x0 - z).pow(2).sum(1))


def minibatch_ot_cost(x0: Tensor, z: Tensor, batch: int) -> CostEstimate:
    """Minibatch OT: split (x0, z) (n, d) into n // batch batches, assign exactly within each, mean ‖x⋆ − z_π‖².

    The standard error is over batches (the per-pair costs within one batch are not independent).
    """
    n = (x0.shape[0] // batch) * batch
    if n == 0:
        raise ValueError(f"need at least one batch of {batch} pairs, got {x0.shape[0]}")
    means = []
    for lo in range(0, n, batch):
        a, b = x0[lo : lo + batch], z[lo : lo + batch]
        means.append(float((a - minibatch_ot_coupling(a, b)).pow(2).sum(1).mean()))
    t = torch.tensor(means, dtype=torch.float64)
    err = float(t.std() / math.sqrt(len(means))) if len(means) > 1 else float("nan")
    return CostEstimate(float(t.mean()), err)


def gaussian_costs(
    sigma: float, std: float, dim: int, mean_sq_norm: float = 0.0, sigma_min: float = 0.002
) -> dict[str, float]:
    """Closed forms for data N(m, s²I) (‖m‖² = `mean_sq_norm`) against z ~ N(0, I).

    IC: ‖m‖² + d (s² + 1); exact OT (W2²): ‖m‖² + d (s − 1)²;
    GC with f⋆: x̂ = m + c (x⋆ − m + σ z), c = sqrt((s² + σ_min²)/(s² + σ²)), so
    c(σ) = ‖m‖² + d (c² s² + (c σ − 1)²).
    """
    c = gaussian_map_scale(float(sigma), std, sigma_min)
    return {
        "ic": mean_sq_norm + dim * (std**2 + 1.0),
        "ot": mean_sq_norm + dim * (std - 1.0) ** 2,
        "gc": mean_sq_norm + dim * (c**2 * std**2 + (c * sigma - 1.0) ** 2),
    }


@torch.no_grad()
def generator_cost_curve(f: PointFn, x0: Tensor, z: Tensor, sigmas: list[float]) -> list[CostEstimate]:
    """GC: c(σ) = mean ‖f(x⋆ + σ z, σ) − z‖² for each σ; x0, z: (n, d); f maps (B, d), (B,) -> (B, d).

    All levels are mapped in one call (σ repeated per sample), which lets an ODE-based f⋆ solve them
    together.
    """
    n = x0.shape[0]
    s = torch.tensor(sigmas, dtype=x0.dtype).repeat_interleave(n)
    xs = x0.repeat(len(sigmas), 1) + s[:, None] * z.repeat(len(sigmas), 1)
    ends = f(xs, s).to(x0.dtype).reshape(len(sigmas), n, -1)
    return [_summary((ends[k] - z).pow(2).sum(1)) for k in range(len(sigmas))]
