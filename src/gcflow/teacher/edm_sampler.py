"""EDM's deterministic sampler (Karras et al. 2022, Algorithm 1 without churn) for diffusion runs.

    t_i = (σ_max^{1/ρ} + i/(n−1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ,  i = 0..n−1,  t_n = 0
    x_0 = t_0 z;  d_i = (x_i − D(x_i, t_i))/t_i;  x_{i+1} = x_i + (t_{i+1} − t_i) d_i   (Euler)
    Heun adds the trapezoidal correction with d at (x_{i+1}, t_{i+1}) except on the last step (t_n = 0).

So n Heun steps cost 2n − 1 denoiser evaluations. gcflow evaluates diffusion runs (method.pairs=edm)
with it, so a teacher's metrics.jsonl holds the same image metrics as a consistency run's.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import Tensor

DenoiserFn = Callable[[Tensor, Tensor], Tensor]  # D(x (B, *D), σ (B,)) -> (B, *D)


def edm_sampler_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    """The n + 1 decreasing levels t_0 = σ_max > ... > t_{n−1} = σ_min > t_n = 0, float64, shape (n + 1,)."""
    if steps < 1:
        raise ValueError(f"the EDM sampler needs steps >= 1, got {steps}")
    i = torch.arange(steps, dtype=torch.float64)
    frac = i / max(steps - 1, 1)
    t = (sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([t, torch.zeros(1, dtype=torch.float64)])


@torch.no_grad()
def edm_sample(
    denoiser: DenoiserFn,
    z: Tensor,
    steps: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    solver: str = "heun",
) -> Tensor:
    """Integrate the PF-ODE dx/dσ = (x − D(x, σ))/σ from σ_max z down to σ = 0; z: (B, *D) -> (B, *D)."""
    if solver not in ("euler", "heun"):
        raise ValueError(f"unknown EDM solver {solver!r}; choose euler or heun")
    t = edm_sampler_sigmas(steps, sigma_min, sigma_max, rho).tolist()
    x = z * t[0]
    n = z.shape[0]

    def slope(x: Tensor, s: float) -> Tensor:
        sig = torch.full((n,), s, dtype=z.dtype, device=z.device)
        return (x - denoiser(x, sig).to(x.dtype)) / s

    for cur, nxt in itertools.pairwise(t):
        d = slope(x, cur)
        x_next = x + (nxt - cur) * d
        if solver == "heun" and nxt > 0:
            x_next = x + (nxt - cur) * 0.5 * (d + slope(x_next, nxt))
        x = x_next
    return x


def sample_denoiser(
    model: Callable[..., Tensor],
    z: Tensor,
    steps: int,
    sigma_min: float,
    sigma_max: float,
    rho: float = 7.0,
    class_labels: Tensor | None = None,
) -> Tensor:
    """Samples (B, *D) of a diffusion model D(x, σ[, class_labels]) with `steps` Heun steps."""

    def d(x: Tensor, s: Tensor) -> Tensor:
        return model(x, s, class_labels) if class_labels is not None else model(x, s)

    return edm_sample(d, z, steps, sigma_min, sigma_max, rho)


__all__ = ["edm_sample", "edm_sampler_sigmas", "sample_denoiser"]
