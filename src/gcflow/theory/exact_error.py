"""Error of a consistency model against the exact consistency map: E‖f_θ(x_σ, σ) − f⋆(x_σ, σ)‖² per σ.

The evaluation points x_σ = x⋆ + σ z and their exact images f⋆(x_σ, σ) are computed once
(`exact_map_targets`, one batched ODE solve for all levels), so scoring a model during training costs
one forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gcflow.pairs.types import PointFn
from gcflow.theory.exact_map import ODETolerance, exact_consistency_map
from gcflow.toy.mixture import GaussianMixture


@dataclass(frozen=True)
class ExactMapTargets:
    """Fixed evaluation points on the noising path and their exact consistency images.

    Attributes:
        sigmas: the S levels.
        x: (S, n, d) points x⋆ + σ z (float64).
        target: (S, n, d) f⋆(x, σ) (float64).
    """

    sigmas: list[float]
    x: Tensor
    target: Tensor


def exact_map_targets(
    mixture: GaussianMixture,
    sigmas: list[float],
    n: int,
    generator: torch.Generator,
    sigma_min: float = 0.002,
    tol: ODETolerance = ODETolerance(),
) -> ExactMapTargets:
    """Draw n points per level (fresh x⋆ and z for each level) and map them exactly with f⋆."""
    s = len(sigmas)
    x0 = mixture.sample(n * s, generator)
    z = torch.randn(n * s, mixture.dim, generator=generator, dtype=torch.float64)
    sig = torch.tensor(sigmas, dtype=torch.float64).repeat_interleave(n)
    x = x0 + sig[:, None] * z
    target = exact_consistency_map(mixture, x, sig, sigma_min, tol)
    return ExactMapTargets(list(map(float, sigmas)), x.reshape(s, n, -1), target.reshape(s, n, -1))


@torch.no_grad()
def error_to_exact(f: PointFn, targets: ExactMapTargets) -> list[float]:
    """E‖f(x_σ, σ) − f⋆(x_σ, σ)‖² for each level; f maps (B, d), (B,) -> (B, d) in any float dtype."""
    s, n, d = targets.x.shape
    sig = torch.tensor(targets.sigmas, dtype=torch.float64).repeat_interleave(n)
    x = targets.x.reshape(s * n, d)
    dtype = _model_dtype(f)
    out = f(x.to(dtype), sig.to(dtype)).to(torch.float64).reshape(s, n, d)
    return [float(v) for v in (out - targets.target).pow(2).sum(-1).mean(1)]


def _model_dtype(f: PointFn) -> torch.dtype:
    params = getattr(f, "parameters", None)
    if params is not None:
        for p in params():
            return p.dtype
    return torch.float64
